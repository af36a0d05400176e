//! One capture of everything logged in the test process, for the tests that look for secrets in
//! the logs (and that the logs they scan were really written).

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

/// The process's log buffer: every span (at its close) and event, at TRACE, from every crate and
/// thread, `log` records (rustls, reqwest) included, without colours.
#[derive(Clone)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// All that was logged since the capture was installed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide capturing subscriber on the first call and returns its buffer (the
/// same one on every call). A scoped subscriber would miss the events of callsites other test
/// threads registered first. Panics when another global subscriber is installed already.
pub fn capture() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs(Arc::default());
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("install the capturing subscriber");
        logs
    })
    .clone()
}
