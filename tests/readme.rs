//! The README's configuration reference names every config field: a config is serialized (which
//! emits every field of the schema) and each key path must appear in the README.

use std::collections::BTreeSet;

fn paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                // Names the user chose become placeholders, as the README writes them.
                let key = match prefix {
                    "listeners" => "<name>",
                    "apps" => "<app>",
                    p if p.ends_with(".split") || p.ends_with(".versions") => "<version>",
                    _ => k.as_str(),
                };
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                if path.ends_with(".endpoints") {
                    out.insert(path);
                    continue;
                }
                match v {
                    toml::Value::Table(_) => paths(v, &path, out),
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn config_reference_covers_every_field() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/canary.toml")).unwrap();
    let config = weir::Config::parse(&text, "canary.toml").unwrap();
    let value = toml::Value::try_from(&config).unwrap();
    let mut keys = BTreeSet::new();
    paths(&value, "", &mut keys);
    assert!(keys.len() > 10, "{keys:?}");
    for key in &keys {
        assert!(readme.contains(&format!("`{key}`")), "README's config reference lacks `{key}`");
    }
    // Endpoints are a list of inline tables; their fields are listed together.
    assert!(readme.contains("`{ addr, name }`"));
}

#[test]
fn readme_leads_with_the_demo_and_test_commands() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first_block = readme.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    assert!(first_block.contains("cargo run --release -- demo"));
    assert!(first_block.contains("cargo test"));
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "cargo test"), ".ci/run must run the README's test command");
}
