//! End-to-end test support for Baton. The agent and gateway processes
//! arrive with their issues; until then this crate checks that the protocol
//! crate's public surface is usable from outside the workspace member.
