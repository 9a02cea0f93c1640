//! Starting the project's S3 test servers (`.ci/s3-test-server`), for the end-to-end tests and
//! the engine's backend tests alike (engine/tests/backend.rs includes this file by path).

use std::path::Path;
use std::process::Command;

/// Starts (or reuses) one of the project's S3 servers on 127.0.0.1 and returns its endpoint:
/// `ministack` (the emulator: Glacier simulation, Object Lock), `seaweedfs` (a production
/// store) or `moto` (bucket regions). Each but the emulator keeps its own state folder, so they
/// run side by side.
pub fn s3_server(server: &str) -> String {
    // The script is in the workspace root's .ci/, above whichever package runs the tests.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join(".ci/s3-test-server"))
        .find(|p| p.is_file())
        .expect(".ci/s3-test-server above the package");
    let mut c = Command::new("bash");
    c.arg(script);
    if server != "ministack" {
        c.env("S3_SERVER", server).env(
            "S3_STATE_DIR",
            std::env::temp_dir().join(format!("s3-test-server-{server}-{}", unsafe {
                libc::geteuid()
            })),
        );
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "S3 test server: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ep = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(ep.starts_with("http://127.0.0.1:"), "{ep}");
    ep
}

/// The store the S3 tests run against: the emulator, or the server named by
/// `CHUNKBAK_TEST_S3_SERVER` (CI runs the S3 tests a second time with `seaweedfs`).
pub fn s3_endpoint() -> String {
    s3_server(&std::env::var("CHUNKBAK_TEST_S3_SERVER").unwrap_or_else(|_| "ministack".into()))
}
