//! The deployment files of deploy/ stay true to the gateway: the Kubernetes ConfigMap's config is
//! one `infergate check` accepts, the readiness probe carries that config's admin token to its admin
//! port, and the systemd unit checks the config it runs before it starts and before a reload.

use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The config between the manifest's BEGIN and END markers, unindented.
fn configmap_config(manifest: &str) -> String {
    let start = manifest.find("# BEGIN infergate.toml").expect("a BEGIN marker");
    let end = manifest.find("# END infergate.toml").expect("an END marker");
    let block = &manifest[start..end];
    let body = &block[block.find("infergate.toml: |").expect("the config's key") + "infergate.toml: |".len()..];
    body.lines().map(|line| line.strip_prefix("    ").unwrap_or(line.trim())).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_kubernetes_config_is_valid_and_its_probe_carries_its_token() {
    let manifest = read("deploy/kubernetes/infergate.yaml");
    let config = configmap_config(&manifest);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("infergate.toml"), &config).unwrap();
    let checked = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["--config", "infergate.toml", "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let token = config.lines().find_map(|line| line.strip_prefix("token = ")).unwrap().trim_matches('"');
    assert!(manifest.contains(&format!("value: \"Bearer {token}\"")), "the probe's token is the config's");
    assert!(config.contains("listen = \"0.0.0.0:9901\"") && manifest.contains("containerPort: 9901"));
    assert!(config.contains("listen = [\"0.0.0.0:8000\"]") && manifest.contains("containerPort: 8000"));
    assert!(manifest.contains("path: /status"));
}

#[test]
fn the_systemd_unit_checks_the_config_it_runs_and_reloads_by_sighup() {
    let unit = read("deploy/systemd/infergate.service");
    let run = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).unwrap();
    let check = unit.lines().find_map(|line| line.strip_prefix("ExecStartPre=")).unwrap();
    assert_eq!(run.strip_suffix(" run"), check.strip_suffix(" check"), "the same binary and config");
    assert!(unit.lines().any(|line| line == format!("ExecReload={check}")), "a reload checks first");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let container = read("deploy/Containerfile");
    assert!(container.contains("USER nonroot"), "the image runs without privileges");
}
