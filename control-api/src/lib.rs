//! Weft control plane library: everything but process start-up lives here so tests reuse it.
