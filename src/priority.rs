//! Thread priorities. A backup's walker is its serial stage: while helper
//! threads (sealing, read-ahead) take the CPU from it, the whole pipeline
//! waits. Helpers run a few nice steps lower, so the scheduler hands the
//! walker a core when it has work and the helpers everything else.

/// Nice steps a helper thread runs below the thread that started it.
pub const HELPER_NICE: i32 = 4;

/// Lowers the calling thread's priority by `by` nice steps, at most to the
/// lowest. Best effort: where the system refuses, the thread stays as is.
pub fn lower_this_thread(by: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux, a thread id given as the process selects just that thread.
    let tid = rustix::thread::gettid();
    if let Ok(now) = getpriority_process(Some(tid)) {
        let _ = setpriority_process(Some(tid), (now + by).min(19));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let tid_nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = tid_nice().unwrap();
        let lowered = std::thread::spawn(move || {
            lower_this_thread(3);
            tid_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 3).min(19));
        assert_eq!(
            tid_nice().unwrap(),
            before,
            "the caller's own priority is untouched"
        );
    }
}
