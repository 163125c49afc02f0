use super::*;

const CONFIG: &str = r#"
[listeners.main]
addr = "127.0.0.1:0"
[apps.web]
listener = "main"
split = { v1 = 90, v2 = 10 }
versions.v1.endpoints = [{ addr = "127.0.0.1:1001" }]
versions.v2.endpoints = [{ addr = "127.0.0.1:1002" }]
"#;

fn control() -> Control {
    Control::new(Config::parse(CONFIG, "test").unwrap(), Metrics::new())
}

fn req(change: Change) -> ChangeRequest {
    ChangeRequest { app: "web".into(), change, reason: "test".into(), if_match: None, by: String::new() }
}

fn weights(c: &Control) -> Vec<(String, u32)> {
    let snap = c.routes().load_full();
    snap.app("web").unwrap().weights().map(|(v, w)| (v.to_string(), w)).collect()
}

fn split(v1: i64, v2: i64) -> Change {
    Change::Split(BTreeMap::from([("v1".into(), v1), ("v2".into(), v2)]))
}

#[test]
fn change_is_stored_before_apply_returns() {
    let mut c = control();
    let before = c.routes().load().generation;
    let out = c.apply(req(split(50, 50))).unwrap();
    assert_eq!(out, Outcome { revision: 2, changed: true });
    assert_eq!(c.routes().load().generation, before + 1);
    assert_eq!(weights(&c), [("v1".into(), 50), ("v2".into(), 50)]);
}

#[test]
fn rejected_changes_leave_everything_as_it_was() {
    let mut c = control();
    let generation = c.routes().load().generation;
    let bad = [
        req(split(0, 0)),
        req(split(-1, 5)),
        req(Change::Split(BTreeMap::from([("v3".into(), 1)]))),
        req(Change::Promote("v9".into())),
        req(Change::Rollback(None)),
        req(Change::Rollback(Some(7))),
        ChangeRequest { app: "nope".into(), ..req(split(1, 1)) },
        ChangeRequest { if_match: Some(5), ..req(split(1, 1)) },
    ];
    for r in bad {
        assert!(c.apply(r.clone()).is_err(), "{r:?} was accepted");
        assert_eq!(c.routes().load().generation, generation);
        assert_eq!(c.history("web").unwrap().len(), 1);
        assert_eq!(weights(&c), [("v1".into(), 90), ("v2".into(), 10)]);
    }
}

#[test]
fn promote_rollback_and_noops() {
    let mut c = control();
    assert_eq!(c.apply(req(Change::Promote("v2".into()))).unwrap().revision, 2);
    assert_eq!(weights(&c), [("v1".into(), 0), ("v2".into(), 100)]);
    // Rolling back restores revision 1's weights as revision 3.
    assert_eq!(c.apply(req(Change::Rollback(None))).unwrap().revision, 3);
    assert_eq!(weights(&c), [("v1".into(), 90), ("v2".into(), 10)]);
    assert_eq!(c.history("web").unwrap()[2].cause, Cause::Rollback { to: 1 });
    // Asking for what is already in force records nothing.
    let out = c.apply(req(split(90, 10))).unwrap();
    assert_eq!(out, Outcome { revision: 3, changed: false });
    assert_eq!(c.apply(req(Change::Rollback(Some(2)))).unwrap().revision, 4);
    assert_eq!(weights(&c), [("v1".into(), 0), ("v2".into(), 100)]);
    // If-Match with the current revision passes.
    let ok = ChangeRequest { if_match: Some(4), ..req(split(1, 1)) };
    assert_eq!(c.apply(ok).unwrap().revision, 5);
}
