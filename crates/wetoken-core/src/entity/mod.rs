//! sea-orm entities for the tables whose shape is fixed.
//!
//! The two credential tables share one shape and are reached through one code path in
//! [`crate::store`] instead.

pub mod app_info;
pub mod user_info;
