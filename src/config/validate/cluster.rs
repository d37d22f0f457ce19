//! `cluster:`: limits shared through Redis. The block's own rules live with
//! it (`cluster::settings`); here its errors get their `cluster.` paths.
//! Nothing contacts Redis.

use super::Collector;
use crate::cluster::{RawSettings, Settings, validate};

pub(super) fn validate_cluster(c: &mut Collector, raw: &RawSettings) -> Option<Settings> {
    match validate(raw) {
        Ok(settings) => Some(settings),
        Err(errors) => {
            for e in errors {
                c.err(format!("cluster.{}", e.field), e.message);
            }
            None
        }
    }
}
