//! Configuration files: every shipped file loads; broken ones give exact diagnostics.
