//! Table-driven tests of the Cedar decisions.
