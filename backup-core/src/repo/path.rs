//! Planning which list objects to read to rebuild a snapshot's list in
//! format 2 (docs/design/format-v2.md, 4.3): from a listing of `lists/`
//! (keys and sizes, nothing downloaded), the cheapest chain
//! `full -> d -> ... -> d` ending at the wanted snapshot, by total listed
//! bytes, of at most [`MAX_OBJECTS`] objects.
//!
//! Pure: it reads no object and trusts nothing it plans over. The reader
//! decodes and applies along the plan and checks the end state against the
//! manifest's `list_blake3`; a plan whose objects fail is retried with those
//! objects in `skip`, so a damaged or forged shortcut costs time, never a
//! wrong restore.
//!
//! Choices where the design leaves room: among paths of equal bytes the one
//! with fewer objects wins (then the first found, which is deterministic for
//! a given listing order); a plan never holds more than [`MAX_OBJECTS`]
//! objects, so a snapshot reachable only by longer chains has no plan; keys
//! under `lists/` that are neither `full` nor `d-<id>` are ignored here (they
//! are not list objects of format 2).
//!
//! Never: return a plan that does not start at a full list, that uses an
//! object in `skip`, or that holds more than [`MAX_OBJECTS`] objects.

use std::collections::{HashMap, HashSet};

use super::LISTS;

/// The most objects a path may hold before it is long.
pub const MAX_OBJECTS: usize = 16;
/// The estimated size of a full list per chunk, for the byte bound.
pub const FULL_BYTES_PER_CHUNK: u64 = 40;

/// One list object as a listing of `lists/` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListObject {
    /// The snapshot whose list it is.
    pub snapshot: String,
    /// `None` for `full`, else the snapshot the delta starts from.
    pub from: Option<String>,
    /// The listed size in bytes.
    pub size: u64,
}

impl ListObject {
    /// The object for a listed key `lists/<id>/full` or `lists/<id>/d-<from>`;
    /// `None` for any other key.
    pub fn from_key(key: &str, size: u64) -> Option<ListObject> {
        let (snapshot, name) = key.strip_prefix(LISTS)?.split_once('/')?;
        let from = match name {
            "full" => None,
            _ => Some(name.strip_prefix("d-").filter(|f| valid(f))?.to_string()),
        };
        valid(snapshot).then(|| ListObject {
            snapshot: snapshot.to_string(),
            from,
            size,
        })
    }

    /// The object's key.
    pub fn key(&self) -> String {
        match &self.from {
            None => format!("{LISTS}{}/full", self.snapshot),
            Some(from) => format!("{LISTS}{}/d-{from}", self.snapshot),
        }
    }
}

fn valid(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

/// A planned chain: a full list first, then deltas, ending at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub objects: Vec<ListObject>,
    /// Total listed bytes.
    pub bytes: u64,
}

impl Plan {
    /// Whether this path is long for a snapshot of `chunks` chunks.
    pub fn is_long(&self, chunks: u64) -> bool {
        is_long(self.objects.len(), self.bytes, chunks)
    }
}

/// Whether a path of `objects` objects and `bytes` listed bytes is long for
/// a snapshot of `chunks` chunks: more than [`MAX_OBJECTS`] objects, or more
/// bytes than twice the estimated full list.
pub fn is_long(objects: usize, bytes: u64, chunks: u64) -> bool {
    objects > MAX_OBJECTS || bytes > 2 * FULL_BYTES_PER_CHUNK * chunks
}

/// The cheapest path to `target` over `objects`, of at most [`MAX_OBJECTS`]
/// objects, using none whose key is in `skip`; `None` when there is none.
pub fn plan(objects: &[ListObject], target: &str, skip: &HashSet<String>) -> Option<Plan> {
    let usable: Vec<&ListObject> = objects
        .iter()
        .filter(|o| !skip.contains(&o.key()))
        .collect();
    // best[k][s]: the cheapest path of k + 1 objects ending at s, as (bytes,
    // index of its last object). Layers bound the object count exactly,
    // which a plain Dijkstra on bytes would not.
    let mut best: Vec<HashMap<&str, (u64, usize)>> = Vec::with_capacity(MAX_OBJECTS);
    let mut layer = HashMap::new();
    for (i, o) in usable.iter().enumerate() {
        if o.from.is_none() {
            relax(&mut layer, &o.snapshot, o.size, i);
        }
    }
    while !layer.is_empty() && best.len() < MAX_OBJECTS {
        let mut next = HashMap::new();
        for (i, o) in usable.iter().enumerate() {
            let Some(from) = o.from.as_deref() else {
                continue;
            };
            if let Some(&(bytes, _)) = layer.get(from) {
                relax(&mut next, &o.snapshot, bytes + o.size, i);
            }
        }
        best.push(layer);
        layer = next;
    }
    let (len, &(bytes, _)) = (best.iter().enumerate())
        .filter_map(|(k, l)| l.get(target).map(|b| (k, b)))
        .min_by_key(|(k, (bytes, _))| (*bytes, *k))?;
    let mut chain = Vec::with_capacity(len + 1);
    let mut at = target;
    for k in (0..=len).rev() {
        let (_, i) = best[k][at];
        chain.push(usable[i].clone());
        at = usable[i].from.as_deref().unwrap_or(at);
    }
    chain.reverse();
    Some(Plan {
        objects: chain,
        bytes,
    })
}

fn relax<'a>(layer: &mut HashMap<&'a str, (u64, usize)>, at: &'a str, bytes: u64, i: usize) {
    let slot = layer.entry(at).or_insert((bytes, i));
    if bytes < slot.0 {
        *slot = (bytes, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str, size: u64) -> ListObject {
        ListObject::from_key(&format!("lists/{s}/full"), size).unwrap()
    }

    fn delta(s: &str, from: &str, size: u64) -> ListObject {
        ListObject::from_key(&format!("lists/{s}/d-{from}"), size).unwrap()
    }

    fn keys(p: &Plan) -> Vec<String> {
        p.objects.iter().map(ListObject::key).collect()
    }

    /// The cheapest chain by listed bytes wins, shortcuts included; a plan
    /// never exceeds 16 objects (a costlier short path wins over a cheaper
    /// long one); skipped objects are planned around; the bounds say long.
    #[test]
    fn the_cheapest_path_is_chosen_within_bounds() {
        let mut objs = vec![full("s0", 1000)];
        for i in 1..=30 {
            objs.push(delta(&format!("s{i}"), &format!("s{}", i - 1), 10));
        }
        let none = HashSet::new();
        let p = plan(&objs, "s3", &none).unwrap();
        assert_eq!(
            keys(&p),
            [
                "lists/s0/full",
                "lists/s1/d-s0",
                "lists/s2/d-s1",
                "lists/s3/d-s2"
            ]
        );
        assert_eq!(p.bytes, 1030);
        assert!(
            plan(&objs, "s16", &none).is_none(),
            "17 objects are too many"
        );
        assert_eq!(plan(&objs, "s15", &none).unwrap().objects.len(), 16);

        // A shortcut from s0 to s9 beats nine deltas; a cheaper full list
        // beats the chain; a costlier full list is the only plan in bounds.
        objs.push(delta("s9", "s0", 50));
        objs.push(full("s20", 5000));
        objs.push(full("s12", 900));
        let p = plan(&objs, "s10", &none).unwrap();
        assert_eq!(
            keys(&p),
            ["lists/s0/full", "lists/s9/d-s0", "lists/s10/d-s9"]
        );
        assert_eq!(p.bytes, 1060);
        assert_eq!(
            keys(&plan(&objs, "s13", &none).unwrap()),
            ["lists/s12/full", "lists/s13/d-s12"]
        );
        let p = plan(&objs, "s24", &none).unwrap();
        assert_eq!(
            p.objects[0].key(),
            "lists/s12/full",
            "via s12: 13 objects, 1020 B"
        );
        assert_eq!((p.objects.len(), p.bytes), (13, 1020));
        let p = plan(&objs, "s29", &none).unwrap();
        assert_eq!(
            p.objects[0].key(),
            "lists/s20/full",
            "s12's path would be 18 objects"
        );

        // Equal bytes: fewer objects.
        objs.push(delta("s2", "s0", 20));
        assert_eq!(plan(&objs, "s2", &none).unwrap().objects.len(), 2);

        // A damaged shortcut is planned around.
        let skip: HashSet<String> = ["lists/s9/d-s0".to_string()].into();
        let p = plan(&objs, "s10", &skip).unwrap();
        assert_eq!(p.bytes, 1000 + 20 + 8 * 10);
        let skip: HashSet<String> = ["lists/s0/full".to_string(), "lists/s12/full".into()].into();
        assert!(plan(&objs, "s10", &skip).is_none());
        assert!(plan(&objs, "nowhere", &none).is_none());

        // Bounds: 16 objects is not long, 17 is; bytes over 80 per chunk are.
        assert!(!is_long(16, 800, 10) && is_long(17, 1, 10) && is_long(1, 801, 10));
        let p = plan(&objs, "s3", &none).unwrap();
        assert_eq!(p.bytes, 1030);
        assert!(
            p.is_long(12) && !p.is_long(13),
            "1030 B against 80 B a chunk"
        );

        assert_eq!(ListObject::from_key("lists/a/x-b", 1), None);
        assert_eq!(ListObject::from_key("lists/a/d-", 1), None);
        assert_eq!(ListObject::from_key("lists/a", 1), None);
        assert_eq!(ListObject::from_key("snapshots/a/full", 1), None);
    }
}
