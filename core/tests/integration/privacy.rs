//! Privacy through the core: a private request never opens a socket (a listener counts the
//! connections, and the same request not marked private is the positive control), and the
//! ledger holds no prompt or answer text unless `store_prompts` is on.

use edgecascade::config::RemoteConfig;
use edgecascade::{ChatRequest, NullSink, Reason, Route, Runtime};

use crate::fault_server::{Behavior, FaultServer};

fn runtime(server: &FaultServer, ledger: &std::path::Path, store_prompts: bool) -> Runtime {
    let mut c = crate::config_for(crate::smollm2());
    c.remote = Some(RemoteConfig {
        base_url: server.url.clone(),
        model: "remote-model".into(),
        api_key: Some("sk-privacy-test-7d1e".into()),
        max_retries: 0,
        ..RemoteConfig::default()
    });
    // Every answer escalates unless the request is private.
    c.cascade.threshold = 0.0;
    c.ledger.path = Some(ledger.to_owned());
    c.ledger.store_prompts = store_prompts;
    Runtime::new(c).expect("runtime")
}

#[test]
fn a_private_request_never_connects_and_the_ledger_keeps_no_text() {
    let server = FaultServer::start(vec![Behavior::Stream {
        pieces: vec!["Remote ", "answer."],
        usage: Some((12, 3)),
    }]);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let rt = runtime(&server, &ledger, false);
    let prompt = "My account number is 99-PRIVATE-1234; what should I do?";
    let req = |private: bool| ChatRequest {
        private,
        max_tokens: 12,
        ..ChatRequest::user(prompt)
    };
    for _ in 0..3 {
        let r = rt.chat(&req(true), &NullSink).expect("answer");
        assert_eq!((r.route, r.reason), (Route::Local, Reason::Private));
    }
    assert_eq!(server.count(), 0, "a private request opened a connection");
    // The positive control: the same request, not private, reaches the server.
    let r = rt.chat(&req(false), &NullSink).expect("answer");
    assert_eq!(r.route, Route::Escalated, "{r:?}");
    assert_eq!(server.count(), 1);
    let local_text = rt.chat(&req(true), &NullSink).unwrap().text;
    drop(rt);
    let records = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(records.lines().count(), 5, "{records}");
    assert!(!records.contains("99-PRIVATE-1234"), "{records}");
    assert!(!records.contains("Remote answer"), "{records}");
    assert!(
        local_text.len() < 8 || !records.contains(local_text.trim()),
        "{records}"
    );
    assert!(!records.contains("sk-privacy-test"), "{records}");

    // With store_prompts, the text is kept (the switch works).
    let ledger2 = dir.path().join("with-text.jsonl");
    let rt = runtime(&server, &ledger2, true);
    rt.chat(&req(true), &NullSink).unwrap();
    drop(rt);
    assert!(std::fs::read_to_string(&ledger2)
        .unwrap()
        .contains("99-PRIVATE-1234"));
    assert_eq!(server.count(), 1);
}
