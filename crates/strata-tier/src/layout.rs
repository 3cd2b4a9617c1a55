//! Object keys, relative to the store's prefix:
//!
//! ```text
//! <topic-id>/<partition>/<base-offset:020>-<leader-epoch>.seg   the segment, as on disk
//! <topic-id>/<partition>/<base-offset:020>-<leader-epoch>.idx   its offset and time indexes
//! ```
//!
//! A key is written once with one content: the leader epoch in the name keeps two
//! leaders from ever writing the same key, and an upload retried by the same leader
//! writes the same bytes. The manifest in the metadata service says which keys exist, so
//! the read path never lists.

use uuid::Uuid;

/// What kind of object a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Segment,
    Index,
}

pub fn segment_key(topic_id: Uuid, partition: i32, base_offset: i64, leader_epoch: i32) -> String {
    format!("{topic_id}/{partition}/{base_offset:020}-{leader_epoch}.seg")
}

pub fn index_key(topic_id: Uuid, partition: i32, base_offset: i64, leader_epoch: i32) -> String {
    format!("{topic_id}/{partition}/{base_offset:020}-{leader_epoch}.idx")
}

/// The prefix of every object of a topic.
pub fn topic_prefix(topic_id: Uuid) -> String {
    format!("{topic_id}/")
}

/// A key parsed back: topic id, partition, base offset, leader epoch, kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    pub leader_epoch: i32,
    pub kind: Kind,
}

pub fn parse(key: &str) -> Option<ParsedKey> {
    let mut parts = key.split('/');
    let topic_id = Uuid::parse_str(parts.next()?).ok()?;
    let partition = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let (stem, kind) = if let Some(s) = file.strip_suffix(".seg") {
        (s, Kind::Segment)
    } else {
        (file.strip_suffix(".idx")?, Kind::Index)
    };
    let (base, epoch) = stem.split_once('-')?;
    Some(ParsedKey {
        topic_id,
        partition,
        base_offset: base.parse().ok()?,
        leader_epoch: epoch.parse().ok()?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let id = Uuid::from_u128(42);
        let k = segment_key(id, 3, 1234, 7);
        assert_eq!(k, format!("{id}/3/00000000000000001234-7.seg"));
        assert_eq!(
            parse(&k),
            Some(ParsedKey {
                topic_id: id,
                partition: 3,
                base_offset: 1234,
                leader_epoch: 7,
                kind: Kind::Segment
            })
        );
        assert_eq!(
            parse(&index_key(id, 0, 0, 0)).map(|p| p.kind),
            Some(Kind::Index)
        );
        assert_eq!(parse("junk"), None);
        assert_eq!(parse(&format!("{id}/3/x-1.seg")), None);
        assert_eq!(
            parse(&format!("{id}/3/00000000000000001234-7.seg/extra")),
            None
        );
    }
}
