//! End-to-end behaviour of the broker with the sample ledger downstream and an rmcp client.
