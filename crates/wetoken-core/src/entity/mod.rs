//! The schema as types: sea-orm entities for the tables whose shape is fixed, and column enums
//! with row types for the credential tables, which share one shape (see [`credential`]).
//! Store code names no table or column by a string.

pub mod app_info;
pub mod consumer_key;
pub mod credential;
pub mod user_info;
