//! The default routes, embedded in the binary: used when the configured routes directory
//! does not exist, and written out by `switchboard init`. A test keeps this list equal to
//! the `routes/` folder.

/// Every file of `routes/` (scripts, their tests, the guide): (relative path, text).
pub const EMBEDDED: &[(&str, &str)] = &[
    ("README.md", include_str!("../../routes/README.md")),
    ("_default.rhai", include_str!("../../routes/_default.rhai")),
    (
        "defaults.test.toml",
        include_str!("../../routes/defaults.test.toml"),
    ),
    (
        "pomelo/tokenization_otp.rhai",
        include_str!("../../routes/pomelo/tokenization_otp.rhai"),
    ),
    (
        "pomelo/tokenization_otp.test.toml",
        include_str!("../../routes/pomelo/tokenization_otp.test.toml"),
    ),
    (
        "verestro/cardLocked.rhai",
        include_str!("../../routes/verestro/cardLocked.rhai"),
    ),
    (
        "verestro/cardUnlocked.rhai",
        include_str!("../../routes/verestro/cardUnlocked.rhai"),
    ),
    (
        "verestro/cards.test.toml",
        include_str!("../../routes/verestro/cards.test.toml"),
    ),
    (
        "verestro/otp.rhai",
        include_str!("../../routes/verestro/otp.rhai"),
    ),
    (
        "verestro/otp.test.toml",
        include_str!("../../routes/verestro/otp.test.toml"),
    ),
    (
        "verestro/transactionalLockReasonAdded.rhai",
        include_str!("../../routes/verestro/transactionalLockReasonAdded.rhai"),
    ),
    (
        "verestro/transactionalLockReasonRemoved.rhai",
        include_str!("../../routes/verestro/transactionalLockReasonRemoved.rhai"),
    ),
    (
        "verestro/verification.test.toml",
        include_str!("../../routes/verestro/verification.test.toml"),
    ),
    (
        "verestro/verificationAccepted.rhai",
        include_str!("../../routes/verestro/verificationAccepted.rhai"),
    ),
    (
        "verestro/verificationInProgress.rhai",
        include_str!("../../routes/verestro/verificationInProgress.rhai"),
    ),
    (
        "verestro/verificationRejected.rhai",
        include_str!("../../routes/verestro/verificationRejected.rhai"),
    ),
    (
        "verifyvasp/_default.rhai",
        include_str!("../../routes/verifyvasp/_default.rhai"),
    ),
    (
        "verifyvasp/callbacks.test.toml",
        include_str!("../../routes/verifyvasp/callbacks.test.toml"),
    ),
];
