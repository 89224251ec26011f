//! The hidden-state probe in the runtime: it routes before generation (no local token is
//! decoded), decides after it from the hidden states, refuses a probe fitted on another model,
//! and never loses an answer when the remote tier fails after a pre-generation route.

use std::path::Path;
use std::sync::Mutex;

use edgecascade::config::RemoteConfig;
use edgecascade::policy::probe::{self, Head, HeadPair, Probe};
use edgecascade::policy::Signal;
use edgecascade::{ChatRequest, Event, EventSink, Reason, Route, Runtime, Tier};

use crate::fault_server::{Behavior, FaultServer};

const WIDTH: usize = 576;

/// A head whose probability is `sigmoid(bias + hidden · w)`.
fn head(scalars: usize, hidden: usize, bias: f64, w: f32) -> Head {
    Head {
        mean: vec![0.0; scalars],
        scale: vec![1.0; scalars],
        weights: vec![0.0; scalars],
        hidden_mean: vec![0.0; hidden],
        hidden_weights: vec![w; hidden],
        bias,
    }
}

/// A probe for `model`: before generation the expected gain of the local answer is `pre`
/// (P(small) - P(large), roughly), after it `post`.
fn probe_for(model: &Path, pre: f64, post: f64) -> Probe {
    let (pre_names, post_names) = Probe::names(&[]);
    let pair = |g: f64, n: usize, h: usize| HeadPair {
        small: head(n, h, 10.0 * g, 0.0),
        large: head(n, h, -10.0 * g, 0.0),
    };
    Probe {
        format: probe::FORMAT.into(),
        model_sha256: edgecascade::models::pull::sha256_file(model)
            .unwrap()
            .unwrap()
            .0,
        n_embd: WIDTH,
        hidden_tensor: edgecascade::engine::local::FINAL_HIDDEN_TENSOR.into(),
        pre: pair(pre, pre_names.len(), WIDTH),
        post: pair(post, post_names.len(), 2 * WIDTH),
        pre_features: pre_names,
        post_features: post_names,
        tasks: Vec::new(),
        pre_threshold: Some(0.0),
        threshold: 0.0,
        fitted_on: "test".into(),
    }
}

fn runtime(server: &FaultServer, probe: &Probe, dir: &Path) -> Result<Runtime, edgecascade::Error> {
    let path = dir.join("probe.json");
    std::fs::write(&path, serde_json::to_string(probe).unwrap()).unwrap();
    let mut c = crate::config_for(crate::smollm2());
    c.remote = Some(RemoteConfig {
        base_url: server.url.clone(),
        model: "remote-model".into(),
        max_retries: 0,
        ..RemoteConfig::default()
    });
    c.cascade.signal = Signal::Probe;
    c.cascade.threshold = 0.0;
    // Only the probe decides.
    c.cascade.mid_stream_floor = 0.0;
    c.cascade.probe = Some(path);
    Runtime::new(c)
}

/// Counts local and remote tokens as they stream.
#[derive(Default)]
struct Count(Mutex<(usize, usize)>);

impl EventSink for Count {
    fn on_event(&self, e: Event) {
        if let Event::Token { tier, .. } = e {
            let mut c = self.0.lock().unwrap();
            match tier {
                Tier::Local => c.0 += 1,
                Tier::Remote => c.1 += 1,
            }
        }
    }
}

fn req() -> ChatRequest {
    ChatRequest {
        max_tokens: 12,
        ..ChatRequest::user("Who wrote Hamlet?")
    }
}

#[test]
fn a_low_predicted_gain_goes_remote_before_any_local_token() {
    let server = FaultServer::start(vec![Behavior::Stream {
        pieces: vec!["Shakespeare."],
        usage: Some((9, 3)),
    }]);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(
        &server,
        &probe_for(&crate::smollm2(), -1.0, 1.0),
        dir.path(),
    )
    .unwrap();
    let count = Count::default();
    let r = rt.chat(&req(), &count).expect("answer");
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::PredictedLowGain),
        "{r:?}"
    );
    assert_eq!(r.text, "Shakespeare.");
    let local = r.usage.local.expect("the prompt was evaluated locally");
    assert_eq!(local.completion_tokens, 0, "no local token decoded");
    assert_eq!(
        *count.0.lock().unwrap(),
        (0, 1),
        "(local, remote) tokens streamed"
    );
    assert_eq!(server.count(), 1);
}

#[test]
fn a_high_predicted_gain_answers_locally_and_the_probe_decides_after() {
    let server = FaultServer::start(vec![Behavior::Stream {
        pieces: vec!["Shakespeare."],
        usage: Some((9, 3)),
    }]);
    let dir = tempfile::tempdir().unwrap();
    // Kept after the answer.
    let rt = runtime(&server, &probe_for(&crate::smollm2(), 1.0, 1.0), dir.path()).unwrap();
    let count = Count::default();
    let r = rt.chat(&req(), &count).expect("answer");
    assert_eq!(
        (r.route, r.reason),
        (Route::Local, Reason::Accepted),
        "{r:?}"
    );
    assert!(r.reason_detail.starts_with("probe "), "{}", r.reason_detail);
    assert!(count.0.lock().unwrap().0 > 0);
    assert_eq!(server.count(), 0);
    // Escalated after the answer.
    let rt = runtime(
        &server,
        &probe_for(&crate::smollm2(), 1.0, -1.0),
        dir.path(),
    )
    .unwrap();
    let r = rt.chat(&req(), &Count::default()).expect("answer");
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::LowConfidence),
        "{r:?}"
    );
    assert!(r.usage.local.expect("local").completion_tokens > 0);
    assert_eq!(server.count(), 1);
}

#[test]
fn a_failed_remote_after_a_pre_generation_route_still_answers_locally() {
    let server = FaultServer::start(vec![Behavior::Status(401, None)]);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(
        &server,
        &probe_for(&crate::smollm2(), -1.0, 1.0),
        dir.path(),
    )
    .unwrap();
    let count = Count::default();
    let r = rt.chat(&req(), &count).expect("answer");
    assert_eq!(
        (r.route, r.reason),
        (Route::DegradedLocal, Reason::PredictedLowGain),
        "{r:?}"
    );
    assert!(
        !r.text.trim().is_empty(),
        "the local model answered in full"
    );
    assert!(count.0.lock().unwrap().0 > 0);
}

#[test]
fn a_probe_for_another_model_or_width_refuses_to_load() {
    let server = FaultServer::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let mut other = probe_for(&crate::smollm2(), 1.0, 1.0);
    other.model_sha256 = "0".repeat(64);
    let e = runtime(&server, &other, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("was fitted on the model with sha256 0000"),
        "{e}"
    );
    assert!(e.contains("refit"), "{e}");
    let mut narrow = probe_for(&crate::smollm2(), 1.0, 1.0);
    narrow.n_embd = 896;
    let e = runtime(&server, &narrow, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("hidden width of 896"), "{e}");
    // Fitted on a middle layer's states, loaded by an engine that reads the final ones.
    let mut middle = probe_for(&crate::smollm2(), 1.0, 1.0);
    middle.hidden_tensor = "attn_norm-15".into();
    let e = runtime(&server, &middle, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"attn_norm-15\"") && e.contains("\"result_norm\""),
        "{e}"
    );
    // A probe file from before the field reads the final state.
    let mut old = serde_json::to_value(probe_for(&crate::smollm2(), 1.0, 1.0)).unwrap();
    old.as_object_mut().unwrap().remove("hidden_tensor");
    let p: Probe = serde_json::from_value(old).unwrap();
    assert_eq!(p.hidden_tensor, "result_norm");
    let mut renamed = probe_for(&crate::smollm2(), 1.0, 1.0);
    renamed.post_features[0] = "something_else".into();
    let e = runtime(&server, &renamed, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refit"), "{e}");
    std::fs::write(dir.path().join("probe.json"), "{not json").unwrap();
    let mut c = crate::config_for(crate::smollm2());
    c.cascade.signal = Signal::Probe;
    c.cascade.threshold = 0.0;
    c.cascade.probe = Some(dir.path().join("probe.json"));
    let e = Runtime::new(c).unwrap_err().to_string();
    assert!(e.contains("probe.json"), "{e}");
    assert_eq!(server.count(), 0);
}
