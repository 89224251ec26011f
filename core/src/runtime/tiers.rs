//! The two tiers as the runtime sees them: small traits over the real engines, so the request
//! flow (routing, the cascade, budgets, cancellation, failures) can also be driven by scripted
//! tiers in tests, fast and without a model.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::engine::local::{GenerateOptions, LocalEngine, LocalOutput, ModelInfo, TokenEvent};
use crate::engine::remote::{RemoteEngine, RemoteError, RemoteOutput};
use crate::error::LocalError;
use crate::types::{ChatMessage, ChatRequest, ToolCall};

/// The local tier.
pub(crate) trait LocalTier: Send + Sync {
    /// Context size.
    fn n_ctx(&self) -> u32;
    /// Tokens the conversation renders to.
    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<u32, LocalError>;
    /// Tokens a request's prompt renders to, with its tools.
    fn count_request_tokens(&self, req: &ChatRequest) -> Result<u32, LocalError> {
        self.count_prompt_tokens(&req.messages)
    }
    /// Why a request's tool calls are not acceptable (see [`LocalEngine::check_calls`]); the
    /// default checks names and required arguments only.
    fn check_calls(&self, req: &ChatRequest, calls: &[ToolCall]) -> Result<(), String> {
        crate::tools::check(req, calls)
    }
    /// Generates an answer (see [`LocalEngine::generate`]).
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError>;
    /// Generates with hidden states and a gate after the prompt (see
    /// [`LocalEngine::generate_with`]); a tier without hidden states generates plainly.
    fn generate_with(
        &self,
        req: &ChatRequest,
        _opts: GenerateOptions<'_>,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        self.generate(req, cancel, on_token)
    }
    /// Continues a cut draft (see [`LocalEngine::continue_answer`]).
    fn continue_answer(
        &self,
        req: &ChatRequest,
        draft: &str,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError>;
    /// Drops any cached rendering of `messages` (privacy: nothing outlives its request).
    fn forget_rendered(&self, messages: &[ChatMessage]);
    /// Drops caches and idle contexts.
    fn trim(&self);
    /// Facts about the model, when it is a real one.
    fn info(&self) -> Option<&ModelInfo>;
    /// Why `text` does not match `format` (`Ok` for text). The real engine also checks the
    /// schema with its tokenizer; the default only parses the JSON.
    fn check_format(
        &self,
        format: &crate::types::ResponseFormat,
        text: &str,
    ) -> Result<(), String> {
        crate::engine::local::constraint::check_json(format, text)
    }
    /// The model runs (in part) on a GPU.
    fn uses_gpu(&self) -> bool {
        self.info().is_some_and(|i| i.gpu_offload)
    }
    /// The real engine behind the tier, if it is one.
    fn engine(self: Arc<Self>) -> Option<Arc<LocalEngine>>;
}

impl LocalTier for LocalEngine {
    fn n_ctx(&self) -> u32 {
        LocalEngine::n_ctx(self)
    }
    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<u32, LocalError> {
        LocalEngine::count_prompt_tokens(self, messages)
    }
    fn count_request_tokens(&self, req: &ChatRequest) -> Result<u32, LocalError> {
        LocalEngine::count_request_tokens(self, req)
    }
    fn check_calls(&self, req: &ChatRequest, calls: &[ToolCall]) -> Result<(), String> {
        LocalEngine::check_calls(self, req, calls).map_err(|e| e.0)
    }
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        LocalEngine::generate(self, req, cancel, on_token)
    }
    fn generate_with(
        &self,
        req: &ChatRequest,
        opts: GenerateOptions<'_>,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        LocalEngine::generate_with(self, req, opts, cancel, on_token)
    }
    fn continue_answer(
        &self,
        req: &ChatRequest,
        draft: &str,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        LocalEngine::continue_answer(self, req, draft, cancel, on_token)
    }
    fn forget_rendered(&self, messages: &[ChatMessage]) {
        LocalEngine::forget_rendered(self, messages);
    }
    fn trim(&self) {
        LocalEngine::trim(self);
    }
    fn info(&self) -> Option<&ModelInfo> {
        Some(LocalEngine::info(self))
    }
    fn check_format(
        &self,
        format: &crate::types::ResponseFormat,
        text: &str,
    ) -> Result<(), String> {
        LocalEngine::check_format(self, format, text).map_err(|e| e.0)
    }
    fn engine(self: Arc<Self>) -> Option<Arc<LocalEngine>> {
        Some(self)
    }
}

/// The remote tier.
pub(crate) trait RemoteTier: Send + Sync {
    /// `Err` while the breaker is open.
    fn check_available(&self) -> Result<(), RemoteError>;
    /// Streams an answer (see [`RemoteEngine::generate`]); a cancel is `Ok` with
    /// `FinishReason::Cancelled`.
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError>;
}

impl RemoteTier for RemoteEngine {
    fn check_available(&self) -> Result<(), RemoteError> {
        RemoteEngine::check_available(self)
    }
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        RemoteEngine::generate(self, req, cancel, on_text)
    }
}
