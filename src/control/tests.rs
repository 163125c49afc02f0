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

#[tokio::test]
async fn change_is_stored_before_apply_returns() {
    let mut c = control();
    let before = c.routes().load().generation;
    let out = c.apply(req(split(50, 50))).await.unwrap();
    assert_eq!(out, Outcome { revision: 2, changed: true, sequence: 1 });
    assert_eq!(c.routes().load().generation, before + 1);
    assert_eq!(weights(&c), [("v1".into(), 50), ("v2".into(), 50)]);
}

#[tokio::test]
async fn rejected_changes_leave_everything_as_it_was() {
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
        assert!(c.apply(r.clone()).await.is_err(), "{r:?} was accepted");
        assert_eq!(c.routes().load().generation, generation);
        assert_eq!(c.history("web").unwrap().len(), 1);
        assert_eq!(weights(&c), [("v1".into(), 90), ("v2".into(), 10)]);
    }
}

#[tokio::test]
async fn promote_rollback_and_noops() {
    let mut c = control();
    assert_eq!(c.apply(req(Change::Promote("v2".into()))).await.unwrap().revision, 2);
    assert_eq!(weights(&c), [("v1".into(), 0), ("v2".into(), 100)]);
    // Rolling back restores revision 1's weights as revision 3.
    assert_eq!(c.apply(req(Change::Rollback(None))).await.unwrap().revision, 3);
    assert_eq!(weights(&c), [("v1".into(), 90), ("v2".into(), 10)]);
    assert_eq!(c.history("web").unwrap()[2].cause, Cause::Rollback { to: 1 });
    // Asking for what is already in force records nothing.
    let out = c.apply(req(split(90, 10))).await.unwrap();
    assert_eq!(out, Outcome { revision: 3, changed: false, sequence: 2 });
    assert_eq!(c.apply(req(Change::Rollback(Some(2)))).await.unwrap().revision, 4);
    assert_eq!(weights(&c), [("v1".into(), 0), ("v2".into(), 100)]);
    // If-Match with the current revision passes.
    let ok = ChangeRequest { if_match: Some(4), ..req(split(1, 1)) };
    assert_eq!(c.apply(ok).await.unwrap().revision, 5);
}

fn file_control(dir: &std::path::Path, config: &str) -> impl Future<Output = Control> {
    let store = Store::File(Arc::new(state::file::FileStore::open(dir).unwrap()));
    let config = Config::parse(config, "test").unwrap();
    async move { Control::open(config, Metrics::new(), store, "test".into()).await.unwrap() }
}

#[tokio::test]
async fn the_stored_split_outlives_a_restart_unless_the_file_split_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = file_control(dir.path(), CONFIG).await;
    c.apply(req(split(25, 75))).await.unwrap();
    c.apply(req(Change::Promote("v2".into()))).await.unwrap();
    drop(c);
    // Same config: the stored split and history win over the file's split.
    let c = file_control(dir.path(), CONFIG).await;
    assert_eq!(weights(&c), [("v1".into(), 0), ("v2".into(), 100)]);
    assert_eq!(c.history("web").unwrap().iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2, 3]);
    drop(c);
    // The file's split section changed: newest intent wins, as a new revision on the history.
    let changed = CONFIG.replace("v1 = 90, v2 = 10", "v1 = 60, v2 = 40");
    let c = file_control(dir.path(), &changed).await;
    assert_eq!(weights(&c), [("v1".into(), 60), ("v2".into(), 40)]);
    let history = c.history("web").unwrap();
    assert_eq!(history.last().unwrap().number, 4);
    assert_eq!(history.last().unwrap().cause, Cause::Config);
    drop(c);
    // And once applied, it is the stored intent: the next start keeps what is stored.
    let mut c = file_control(dir.path(), &changed).await;
    c.apply(req(split(1, 1))).await.unwrap();
    drop(c);
    let c = file_control(dir.path(), &changed).await;
    assert_eq!(weights(&c), [("v1".into(), 1), ("v2".into(), 1)]);
}

#[tokio::test]
async fn adopting_another_replicas_state_skips_older_documents() {
    let mut c = control();
    let mut other = control();
    other.identity = "other".into();
    other.apply(req(split(30, 70))).await.unwrap();
    let newer = other.document(&other.histories);
    let newer = state::Document { sequence: other.sequence, ..newer };
    c.adopt(newer.clone(), Some("2".into()));
    assert_eq!(weights(&c), [("v1".into(), 30), ("v2".into(), 70)]);
    let older = state::Document { sequence: 0, ..newer };
    c.adopt(older, Some("1".into()));
    assert_eq!(weights(&c), [("v1".into(), 30), ("v2".into(), 70)], "an older document changes nothing");
    // A document it cannot use: routing stays, changes are refused with the reason.
    c.unreadable("the state in ConfigMap default/weir-state cannot be read: bad".into());
    assert!(matches!(c.apply(req(split(1, 1))).await, Err(ControlError::Store(_))));
    assert_eq!(weights(&c), [("v1".into(), 30), ("v2".into(), 70)]);
}

#[test]
fn peer_counts_add_up_and_survive_a_peer_restart() {
    use crate::control::rollout::analysis::{Counts, Sample};
    let mut c = control();
    let counts = |requests: u64, failures: u64| -> Counts {
        let s = Sample { requests, failures, latency: Default::default() };
        [("web".to_string(), [("v2".to_string(), s)].into())].into()
    };
    c.set_peer_counts([("b".to_string(), counts(100, 5)), ("c".to_string(), counts(50, 0))].into());
    assert_eq!((c.counted("web", "v2").requests, c.counted("web", "v2").failures), (150, 5));
    // b restarted (its counts went down): what it counted before stays counted.
    c.set_peer_counts([("b".to_string(), counts(10, 1))].into());
    assert_eq!((c.counted("web", "v2").requests, c.counted("web", "v2").failures), (160, 6));
    c.set_peer_counts([("b".to_string(), counts(30, 1))].into());
    assert_eq!(c.counted("web", "v2").requests, 180, "the sum only grows");
}
