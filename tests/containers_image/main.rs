//! The containers/image tier: current containers/image (go.podman.io/image/v5, built by
//! `scripts/upstream.sh` into the `civerify` program) decides pulls from a real loopback
//! registry under the files the rendered MachineConfigs put on a node, as CRI-O does; and
//! Ignition's validator checks every rendered config.

mod fixtures;
mod ignition;
mod keyless;
mod pulls;
mod verify;

/// The containers/image this suite runs, as the program reports it; the pin says which.
#[test]
fn containers_image_is_the_pinned_one() {
    let out = std::process::Command::new(testkit::upstream::civerify())
        .arg("version")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pinned = testkit::upstream::pinned("civerify", "go.podman.io/image/v5");
    assert_eq!(line, format!("go.podman.io/image/v5 {pinned}"));
    println!("containers/image: {line}");
}
