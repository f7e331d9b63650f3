//! Integration tests of the mock WeChat: a real server on a loopback port, driven over HTTP.

mod control;
mod faults;
mod official;
mod open;
mod quota;
mod stable;
mod support;
mod wecom;
