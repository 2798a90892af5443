//! The commented configs in `deploy/regions/` parse into the typed configs and validate, so the
//! documentation cannot drift from the code.

use meridian_edge::EdgeConfig;
use meridian_origin::OriginConfig;

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/regions")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn origin_config_parses_and_validates() {
    let c: OriginConfig = toml::from_str(&read("origin.toml")).unwrap();
    c.validate().unwrap();
    assert_eq!(c.http_listen.port(), 7070);
}

#[test]
fn region_configs_parse_and_validate() {
    for (region, port) in [("us-east", 7081), ("eu-west", 7082), ("ap-south", 7083)] {
        let c: EdgeConfig = toml::from_str(&read(&format!("{region}.toml"))).unwrap();
        c.validate().unwrap();
        assert_eq!(c.region, region);
        assert_eq!(c.http_listen.port(), port);
    }
}

#[test]
fn validation_names_the_key_and_the_limit() {
    let mut c: EdgeConfig = toml::from_str(&read("us-east.toml")).unwrap();
    c.heartbeat_interval_ms = 1;
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "heartbeat_interval_ms");
    assert!(e.to_string().contains("between 10 and 60000"), "{e}");
    let bad = read("origin.toml").replace("node_id", "nodeid");
    assert!(
        toml::from_str::<OriginConfig>(&bad).is_err(),
        "unknown keys are refused"
    );
}
