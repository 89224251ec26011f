//! Does the model fit? An estimate, from the GGUF header alone, of what loading it takes
//! (weights, the KV cache for the configured context and sequences, compute buffers), checked
//! against what may be used before llama.cpp sees the file: on a phone, a model that does not
//! fit gets the app killed by the OS, not an error.

use super::gguf::GgufInfo;
use crate::config::LocalConfig;
use crate::error::LocalError;

const MB: u64 = 1_000_000;

/// What loading a model is estimated to take, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Tensor data (mapped from the file; it is resident once used).
    pub weights: u64,
    /// The KV cache: f16 keys and values for every layer and cell.
    pub kv: u64,
    /// KV cells: the context times the sequences served at once.
    pub kv_tokens: u64,
    /// llama.cpp's compute buffers: one batch of logits and activations, per context.
    pub compute: u64,
}

impl MemoryNeed {
    /// The whole estimate.
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.compute
    }
}

/// The estimate for `info` loaded with `cfg` (`None` when the header lacks the model's shape;
/// such a model is loaded unchecked).
pub fn need(info: &GgufInfo, cfg: &LocalConfig) -> Option<MemoryNeed> {
    let layers = info.block_count?;
    let heads_kv = info.head_count_kv?;
    let kv_width = info.kv_width?;
    let embd = info.embedding_length?;
    let vocab = info.n_vocab?;
    // As the engine resolves it: the config's, else the default from the training context.
    let n_ctx = u64::from(cfg.n_ctx.unwrap_or_else(|| {
        let train = info.context_length.unwrap_or(4096);
        super::default_n_ctx(u32::try_from(train).unwrap_or(u32::MAX))
    }));
    let seqs = u64::from(cfg.parallel.max(1));
    let kv_tokens = n_ctx * seqs;
    // Keys and values in f16: heads_kv x (key width + value width) x 2 bytes per cell and layer.
    let kv = layers
        .saturating_mul(kv_tokens)
        .saturating_mul(heads_kv)
        .saturating_mul(kv_width)
        .saturating_mul(2);
    // One ubatch of f32 logits, plus activations of a few times the embedding width; one per
    // context (a batching engine has one for every sequence, a pool one per request).
    let contexts = if cfg.batching { 1 } else { seqs };
    let per_context = u64::from(cfg.n_batch).saturating_mul(vocab + 8 * embd) * 4;
    Some(MemoryNeed {
        weights: info.data_bytes,
        kv,
        kv_tokens,
        compute: per_context.saturating_mul(contexts),
    })
}

/// The memory this process may use, and where that figure comes from: `[local]
/// memory_limit_mb`, else what the system reports available (Linux and Android), else none.
fn limit(cfg: &LocalConfig) -> Option<(u64, &'static str)> {
    if let Some(mb) = cfg.memory_limit_mb {
        return Some((mb.saturating_mul(MB), "[local] memory_limit_mb"));
    }
    available().map(|b| (b, "the system's available memory"))
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available() -> Option<u64> {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_available(&text)
}

fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a model whose estimate exceeds what may be used.
pub(super) fn check(info: &GgufInfo, cfg: &LocalConfig) -> Result<(), LocalError> {
    let (Some(n), Some((limit, from))) = (need(info, cfg), limit(cfg)) else {
        return Ok(());
    };
    if n.total() <= limit {
        return Ok(());
    }
    let mb = |b: u64| b.div_ceil(MB);
    Err(LocalError::InsufficientMemory {
        path: cfg.model.clone().unwrap_or_default(),
        need_mb: mb(n.total()),
        weights_mb: mb(n.weights),
        kv_mb: mb(n.kv),
        kv_tokens: n.kv_tokens,
        compute_mb: mb(n.compute),
        limit_mb: limit / MB,
        limit_from: from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape, as its GGUF header gives it.
    fn smollm2() -> GgufInfo {
        GgufInfo {
            version: 3,
            tensor_count: 272,
            kv_count: 33,
            architecture: Some("llama".into()),
            name: None,
            context_length: Some(8192),
            has_chat_template: true,
            block_count: Some(30),
            embedding_length: Some(576),
            head_count_kv: Some(3),
            kv_width: Some(128),
            n_vocab: Some(49152),
            data_bytes: 96_600_000,
            file_len: 98_362_432,
        }
    }

    #[test]
    fn the_estimate_matches_what_llama_cpp_allocates() {
        // llama.cpp reports for SmolLM2 at n_ctx 4096, n_batch 512: "KV buffer size = 90.00
        // MiB" and "compute buffer size = 106.77 MiB".
        let n = need(&smollm2(), &LocalConfig::default()).unwrap();
        assert_eq!(n.kv, 90 * 1024 * 1024);
        let compute_mib = n.compute as f64 / 1024.0 / 1024.0;
        assert!((compute_mib / 106.77 - 1.0).abs() < 0.1, "{compute_mib}");
        // Four sequences batched: four times the cells, one compute buffer; unbatched: four.
        let four = LocalConfig {
            parallel: 4,
            n_batch: 512,
            ..LocalConfig::default()
        };
        let b = need(&smollm2(), &four).unwrap();
        assert_eq!((b.kv, b.compute), (4 * n.kv, n.compute));
        let pool = need(
            &smollm2(),
            &LocalConfig {
                batching: false,
                ..four.clone()
            },
        )
        .unwrap();
        assert_eq!(pool.compute, 4 * n.compute);
        // Without the shape in the header there is no estimate.
        assert!(need(
            &GgufInfo {
                n_vocab: None,
                ..smollm2()
            },
            &four
        )
        .is_none());
    }

    #[test]
    fn a_model_over_the_limit_is_refused_and_one_under_it_passes() {
        let cfg = |mb| LocalConfig {
            memory_limit_mb: Some(mb),
            ..LocalConfig::default()
        };
        let e = check(&smollm2(), &cfg(200)).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, LocalError::InsufficientMemory { limit_mb: 200, .. }),
            "{text}"
        );
        assert!(
            text.contains("[local] memory_limit_mb") && text.contains("4096 tokens"),
            "{text}"
        );
        assert!(check(&smollm2(), &cfg(1000)).is_ok());
    }

    #[test]
    fn meminfo_is_read_in_kilobytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(meminfo_available(text), Some(12_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }
}
