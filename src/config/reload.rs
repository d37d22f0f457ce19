//! Reload: load → validate → build a new snapshot → swap; the old one keeps
//! serving on any error. (Triggers — SIGHUP, file watch, admin — are added by
//! the live-operations work; they all call [`reload`].)
