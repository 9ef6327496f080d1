//! Fleet mode (issue 12, in progress): one canary decision for every Envoy replica of a
//! service, kept in etcd. So far only the etcd client's wire format (`etcd`); nothing in the
//! module calls it yet.

pub mod etcd;
