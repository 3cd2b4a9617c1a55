//! Object keys, relative to the store's prefix:
//!
//! ```text
//! <topic-id>/<partition>/<base-offset:020>-<leader-epoch>-<upload-id:016x>.seg   the segment, as on disk
//! <topic-id>/<partition>/<base-offset:020>-<leader-epoch>-<upload-id:016x>.idx   its offset and time indexes
//! ```
//!
//! A key is written once and never overwritten: the leader epoch in the name keeps two
//! leaders apart, and the upload id (random, new for every upload attempt, as the UUID of
//! Kafka's remote segment ids) keeps one leader from writing different bytes under a key
//! it used before: a broker whose disk was wiped restarts a log at an offset whose
//! uploads may have been left behind, uncommitted, by a crash. The manifest in the
//! metadata service says which keys exist, so the read path never lists.

use uuid::Uuid;

/// What kind of object a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Segment,
    Index,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Segment => "seg",
            Kind::Index => "idx",
        }
    }
}

/// The parts of an object key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectName {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    pub leader_epoch: i32,
    pub upload_id: u64,
    pub kind: Kind,
}

impl ObjectName {
    /// The key of the segment object of a new upload attempt (a fresh upload id).
    pub fn new_upload(topic_id: Uuid, partition: i32, base_offset: i64, leader_epoch: i32) -> Self {
        Self {
            topic_id,
            partition,
            base_offset,
            leader_epoch,
            upload_id: Uuid::new_v4().as_u64_pair().0,
            kind: Kind::Segment,
        }
    }

    /// The same upload's object of `kind`.
    pub fn with_kind(self, kind: Kind) -> Self {
        Self { kind, ..self }
    }

    pub fn key(&self) -> String {
        format!(
            "{}/{}/{:020}-{}-{:016x}.{}",
            self.topic_id,
            self.partition,
            self.base_offset,
            self.leader_epoch,
            self.upload_id,
            self.kind.extension()
        )
    }

    /// A key parsed back; `None` for anything not of this layout.
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('/');
        let topic_id = Uuid::parse_str(parts.next()?).ok()?;
        let partition = parts.next()?.parse().ok()?;
        let file = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let (stem, ext) = file.rsplit_once('.')?;
        let kind = [Kind::Segment, Kind::Index]
            .into_iter()
            .find(|k| k.extension() == ext)?;
        let mut fields = stem.split('-');
        let (base, epoch, upload) = (fields.next()?, fields.next()?, fields.next()?);
        if fields.next().is_some() || upload.len() != 16 {
            return None;
        }
        Some(Self {
            topic_id,
            partition,
            base_offset: base.parse().ok()?,
            leader_epoch: epoch.parse().ok()?,
            upload_id: u64::from_str_radix(upload, 16).ok()?,
            kind,
        })
    }
}

/// The prefix of every object of a topic.
pub fn topic_prefix(topic_id: Uuid) -> String {
    format!("{topic_id}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let id = Uuid::from_u128(42);
        let name = ObjectName {
            topic_id: id,
            partition: 3,
            base_offset: 1234,
            leader_epoch: 7,
            upload_id: 0xab,
            kind: Kind::Segment,
        };
        let k = name.key();
        assert_eq!(
            k,
            format!("{id}/3/00000000000000001234-7-00000000000000ab.seg")
        );
        assert_eq!(ObjectName::parse(&k), Some(name));
        let idx = name.with_kind(Kind::Index);
        assert_eq!(ObjectName::parse(&idx.key()), Some(idx));
        assert!(idx.key().ends_with("-00000000000000ab.idx"));
        for junk in [
            "junk".to_string(),
            format!("{id}/3/x-1-00000000000000ab.seg"),
            format!("{id}/3/00000000000000001234-7.seg"),
            format!("{id}/3/00000000000000001234-7-ab.seg"),
            format!("{id}/3/00000000000000001234-7-00000000000000ab.log"),
            format!("{k}/extra"),
        ] {
            assert_eq!(ObjectName::parse(&junk), None, "{junk}");
        }
    }

    #[test]
    fn every_upload_attempt_has_its_own_keys() {
        let id = Uuid::from_u128(42);
        let a = ObjectName::new_upload(id, 0, 100, 2);
        let b = ObjectName::new_upload(id, 0, 100, 2);
        assert_ne!(a.key(), b.key());
        assert_eq!(
            (a.base_offset, a.leader_epoch),
            (b.base_offset, b.leader_epoch)
        );
    }
}
