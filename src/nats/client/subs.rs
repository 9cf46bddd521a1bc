//! The subscriptions the client holds: validated once, numbered, and written again in every
//! handshake.

use std::collections::BTreeMap;

use super::errors::NatsError;
use crate::nats::proto;

/// Most subscriptions at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;

#[derive(Debug, Clone)]
struct Subscription {
    subject: String,
    queue: Option<String>,
}

/// Subscriptions by id, in the order they were made.
#[derive(Debug)]
pub(super) struct Subscriptions {
    subs: BTreeMap<u64, Subscription>,
    next_sid: u64,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            subs: BTreeMap::new(),
            next_sid: 1,
        }
    }
}

impl Subscriptions {
    /// Check `subject` (wildcards allowed) and `queue`, and remember them: the new id.
    pub(super) fn add(&mut self, subject: &str, queue: Option<&str>) -> Result<u64, NatsError> {
        proto::validate_subject(subject, true).map_err(NatsError::InvalidSubject)?;
        if let Some(q) = queue {
            proto::validate_queue(q).map_err(NatsError::InvalidSubject)?;
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(NatsError::TooManySubscriptions);
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.subs.insert(
            sid,
            Subscription {
                subject: subject.to_string(),
                queue: queue.map(str::to_string),
            },
        );
        Ok(sid)
    }

    /// Forget `sid`: whether it was held.
    pub(super) fn remove(&mut self, sid: u64) -> bool {
        self.subs.remove(&sid).is_some()
    }

    /// Is `sid` held (a MSG for it is delivered)?
    pub(super) fn contains(&self, sid: u64) -> bool {
        self.subs.contains_key(&sid)
    }

    /// How many.
    pub(super) fn len(&self) -> usize {
        self.subs.len()
    }

    /// (sid, subject), oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.subs.iter().map(|(&sid, s)| (sid, s.subject.as_str()))
    }

    /// A `SUB` for each, oldest first (the handshake re-subscribes).
    pub(super) fn write_all(&self, out: &mut Vec<u8>) {
        for (&sid, s) in &self.subs {
            // Validated when subscribed.
            let _ = proto::encode_sub(out, &s.subject, s.queue.as_deref(), sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_up_and_are_not_reused() {
        let mut s = Subscriptions::default();
        assert_eq!(s.add("a", None), Ok(1));
        assert_eq!(s.add("b.*", Some("q")), Ok(2));
        assert!(s.remove(1));
        assert!(!s.remove(1));
        assert_eq!(s.add("c.>", None), Ok(3));
        assert!(!s.contains(1) && s.contains(2) && s.contains(3));
        assert_eq!(s.iter().collect::<Vec<_>>(), [(2, "b.*"), (3, "c.>")]);
    }

    #[test]
    fn bad_subjects_and_queues_are_refused_and_take_no_id() {
        let mut s = Subscriptions::default();
        assert!(matches!(s.add("", None), Err(NatsError::InvalidSubject(_))));
        assert!(matches!(
            s.add("a b", None),
            Err(NatsError::InvalidSubject(_))
        ));
        assert!(matches!(
            s.add("a", Some("q q")),
            Err(NatsError::InvalidSubject(_))
        ));
        assert_eq!(s.len(), 0);
        assert_eq!(s.add("a", None), Ok(1));
    }

    #[test]
    fn capped() {
        let mut s = Subscriptions::default();
        for i in 0..MAX_SUBSCRIPTIONS {
            s.add(&format!("s.{i}"), None).unwrap();
        }
        assert_eq!(
            s.add("one.more", None),
            Err(NatsError::TooManySubscriptions)
        );
        assert!(s.remove(5));
        assert!(s.add("one.more", None).is_ok());
    }

    #[test]
    fn the_handshake_resubscribes_in_order_with_queues() {
        let mut s = Subscriptions::default();
        s.add("x.>", None).unwrap();
        s.add("y", Some("workers")).unwrap();
        let mut out = Vec::new();
        s.write_all(&mut out);
        assert_eq!(out, b"SUB x.> 1\r\nSUB y workers 2\r\n");
    }
}
