use std::process::Command;

#[test]
fn the_demo_converges_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncline"))
        .args(["demo", "--ops", "3000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("converged: 9000 operations"), "{stdout}");
    assert!(stdout.contains("identical state on a, b and c"), "{stdout}");
}
