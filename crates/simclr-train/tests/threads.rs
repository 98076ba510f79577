//! `tune_threads_for_training` sets candle's spin limit only where the user has not: one test
//! in its own binary, so that nothing else touches the environment while it runs.

use simclr_train::memory::{
    CANDLE_SPIN_LIMIT, CANDLE_SPIN_LIMIT_VAR as VAR, tune_threads_for_training,
};

#[test]
fn spin_limit_is_set_unless_the_user_chose_one() {
    // SAFETY: the only test of this binary, and it starts no thread: no concurrent access to
    // the environment.
    unsafe { std::env::remove_var(VAR) };
    // SAFETY: as above.
    unsafe { tune_threads_for_training() };
    assert_eq!(
        std::env::var(VAR).as_deref(),
        Ok(CANDLE_SPIN_LIMIT.to_string().as_str())
    );

    // SAFETY: as above.
    unsafe { std::env::set_var(VAR, "7") };
    // SAFETY: as above.
    unsafe { tune_threads_for_training() };
    assert_eq!(std::env::var(VAR).as_deref(), Ok("7"));
}
