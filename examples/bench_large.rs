//! Large groups through the service with its default limits (issue 24:
//! GroupInfos and Welcomes without the ratchet tree, the tree served in
//! pages by `<tree epoch page/>`). For groups of 1,024, 4,096 and 10,000
//! (`--quick`: 1,024 and 4,096), on a fresh SQLite store with only
//! `groups.max_members` raised to 10,000:
//!
//! - the group grown as a client grows it: the owner creates it alone (a
//!   GroupInfo with the tree, tiny), then adds every other member's
//!   KeyPackage in commit bundles as large as fit `limits.max_payload_size`
//!   (the bundle's serialised size measured; the first try is 2,048, then
//!   as many as the last size suggests, shrunk by the ratio of the limit
//!   to its size until it fits), their GroupInfo and Welcome without the
//!   tree; `add_batches_{n}` and
//!   `add_accept_large_{n}` (the service against openmls `PublicGroup`
//!   on the same commits);
//! - `tree_fetch_verify_{n}`: a new member's fetch of every page of the
//!   current tree through `Service::handle_iq` and its verification
//!   (`tree_from_pages`, then `PublicGroup::from_external` with a GroupInfo
//!   without the tree: tree hash against the GroupContext, every
//!   signature), against `from_external` on the same tree inline in the
//!   GroupInfo; `tree_pages_{n}`, with the tree's octets against 262144;
//! - `commit_accept_large_{n}`: the service accepting the owner's
//!   self-update (GroupInfo without the tree) with every member's device
//!   on the live feed, against openmls `PublicGroup` alone processing and
//!   merging the same commit (kept in step with every commit of the run);
//!   `self_update_bundle_{n}`: the first one's octets against
//!   `limits.max_payload_size`. Adds carry no UpdatePath, so in a group
//!   grown this way every parent node off the owner's direct path is blank and
//!   its self-update encrypts a path secret to each other leaf: O(n);
//! - `largest_stanza_{n}`: the largest payload or stanza of the size's run
//!   (every request payload, every result payload, every message the
//!   service sends: Welcomes, fan-out), in octets of serialised XML,
//!   against Prosody's default c2s stanza limit (262144).
//!
//! A request payload over `limits.max_payload_size` is still sent, so that
//! the service's own answer is reported; it and any stanza over
//! `limits.max_stanza_out` make the run fail (exit 101) once the figures
//! are printed and written: the failures are listed. A self-update the
//! service refuses leaves that size without `commit_accept_large_{n}`.
//!
//! `cargo run --release --example bench_large -- [--quick] [--json PATH]`
//! prints one line per figure, `name: value unit (ratio vs baseline)`;
//! `--json` also writes them as bench_paths does (`"bench": "large"`).

#[path = "common/bench.rs"]
mod bench;

use std::time::Instant;

use minidom::Element;
use openmls::group::{MlsGroup, ProposalStore, PublicGroup};
use openmls::prelude::KeyPackage;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use xmpp_mls::config::Limits;
use xmpp_mls::protocol::groups::{TreePage, TreeRequest};
use xmpp_mls::protocol::mls;
use xmpp_mls::service::{IqKind, Response, Service};
use xmpp_mls::store::FeedEntry;

use bench::*;

/// Prosody's default c2s stanza limit (256 KiB): the largest stanza a
/// client's own server takes from it, or delivers to it.
const PROSODY_C2S: usize = 262_144;

/// What the run covers: `--quick` keeps it to a few minutes.
struct Plan {
    sizes: Vec<usize>,
    /// Measured self-updates per size (after one unmeasured).
    commits: usize,
    /// Measured tree fetches per size (after one unmeasured).
    fetches: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        match quick {
            true => Plan { sizes: vec![1024, 4096], commits: 5, fetches: 3 },
            false => Plan { sizes: vec![1024, 4096, 10_000], commits: 9, fetches: 5 },
        }
    }
}

/// Every payload and stanza of one size's run against the limits: the
/// largest, and what went over.
struct Stanzas {
    max_payload: usize,
    max_stanza_out: usize,
    largest: usize,
    largest_what: String,
    over: Vec<String>,
}

impl Stanzas {
    fn new(service: &Service) -> Self {
        let max_payload = Limits::default().max_payload_size;
        Stanzas { max_payload, max_stanza_out: service.max_stanza_out(), largest: 0, largest_what: String::new(), over: Vec::new() }
    }

    fn seen(&mut self, octets: usize, what: &str) {
        if octets > self.largest {
            (self.largest, self.largest_what) = (octets, what.to_owned());
        }
    }

    /// A request's payload, which must fit limits.max_payload_size; its octets.
    fn request(&mut self, what: &str, payload: &Element) -> usize {
        let octets = String::from(payload).len();
        self.seen(octets, what);
        if octets > self.max_payload {
            self.over.push(format!("{what}: a request payload of {octets} octets > limits.max_payload_size {}", self.max_payload));
        }
        octets
    }

    /// What the service answers and sends, each within limits.max_stanza_out.
    fn response(&mut self, what: &str, response: &Response) {
        let issued = response.issued.iter().flat_map(|i| &i.stanzas);
        for (kind, el) in response.payload.iter().map(|p| ("result", p)).chain(response.messages.iter().chain(issued).map(|m| ("stanza", m))) {
            let octets = String::from(el).len();
            let what = format!("{what} {kind} <{}/>", el.name());
            self.seen(octets, &what);
            if octets > self.max_stanza_out {
                self.over.push(format!("{what}: {octets} octets > limits.max_stanza_out {}", self.max_stanza_out));
            }
        }
    }
}

/// The owner's group and openmls' PublicGroup kept in step with it, at
/// the service in `id`.
struct Large {
    service: std::sync::Arc<Service>,
    people: Vec<Person>,
    id: [u8; 16],
    group: MlsGroup,
    pg: PublicGroup,
    pg_storage: MemoryStorage,
    stanzas: Stanzas,
}

impl Large {
    fn owner(&self) -> &Person {
        &self.people[0]
    }

    fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Sends the owner's pending commit (`payload`, measured) and merges
    /// it, and the PublicGroup applies it: (service ms, openmls ms). An
    /// answer other than acceptance is returned as it is, the commit
    /// dropped.
    async fn commit(&mut self, what: &str, payload: Element, commit: &[u8]) -> Result<(f64, f64), String> {
        self.stanzas.request(what, &payload);
        let req = iq(&self.owner().jid(), group_jid(&self.id), IqKind::Set, payload);
        let t = Instant::now();
        let answer = self.service.handle_iq(&req).await;
        let ours = ms(t.elapsed());
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                self.group.clear_pending_commit(self.people[0].provider.storage()).unwrap();
                return Err(format!("{e} ({e:?})"));
            }
        };
        self.stanzas.response(what, &response);
        let t = Instant::now();
        public_group_apply(&mut self.pg, self.people[0].provider.crypto(), &self.pg_storage, commit, &self.id);
        let raw = ms(t.elapsed());
        self.group.merge_pending_commit(&self.people[0].provider).unwrap();
        Ok((ours, raw))
    }
}

/// The group of `people` at `service`: created by the first alone, the
/// others added in batches as large as fit limits.max_payload_size.
/// Returns the group, the (service, openmls) ms of each add commit and
/// each batch's (members, bundle octets).
async fn grow(service: std::sync::Arc<Service>, people: Vec<Person>) -> (Large, Vec<(f64, f64)>, Vec<(usize, usize)>) {
    let id: [u8; 16] = rand::random();
    let stanzas = Stanzas::new(&service);
    let (group, create) = create_request(&people[..1], id);
    let owner = &people[0];
    let info = group.export_group_info(owner.provider.crypto(), &owner.signer, true).unwrap();
    let (gi, tree) = mls::group_info(&bytes(&info), &id).unwrap();
    let pg_storage = MemoryStorage::default();
    let (pg, _) = PublicGroup::from_external(owner.provider.crypto(), &pg_storage, tree.unwrap(), gi, ProposalStore::new()).unwrap();
    let mut large = Large { service, people, id, group, pg, pg_storage, stanzas };
    large.stanzas.request("create", &create.payload);
    let response = handle(&large.service, create).await;
    large.stanzas.response("create", &response);

    let t = Instant::now();
    let kps: Vec<KeyPackage> = large.people[1..].iter().map(Person::key_package).collect();
    println!("# {} KeyPackages made in {:.1} s", kps.len(), t.elapsed().as_secs_f64());
    let max = large.stanzas.max_payload;
    let (mut times, mut batches, mut next, mut guess) = (Vec::new(), Vec::new(), 0, 2048);
    while next < kps.len() {
        let mut k = guess.min(kps.len() - next);
        let (payload, commit, octets) = loop {
            let bundle = commit_bundle(&mut large.group, &large.people[0], &kps[next..next + k], false);
            let payload = bundle.to_element();
            let octets = String::from(&payload).len();
            // The next batch's first try: as many as this one's octets a member suggest.
            guess = (k * max / octets).max(1);
            if octets <= max {
                break (payload, bundle.commit, octets);
            }
            large.group.clear_pending_commit(large.people[0].provider.storage()).unwrap();
            assert!(k > 1, "one KeyPackage's add bundle is {octets} octets, over limits.max_payload_size {max}");
            k = guess.min(k - 1);
        };
        let what = format!("add bundle of {k}");
        let added = large.commit(&what, payload, &commit).await;
        times.push(added.unwrap_or_else(|e| panic!("the service refused the {what} at {} members: {e}", next + 1)));
        batches.push((k, octets));
        next += k;
    }
    assert_eq!(large.group.members().count(), large.people.len());
    assert_eq!(large.pg.members().count(), large.people.len());
    (large, times, batches)
}

/// Every page of the tree of the group's current epoch, fetched from the
/// service as the owner's account (a member's), as a new member would;
/// each request and answer measured into `stanzas` if given.
async fn fetch_tree(large: &Large, mut stanzas: Option<&mut Stanzas>) -> Vec<Vec<u8>> {
    let (mut pages, mut count) = (Vec::new(), 1);
    while (pages.len() as u64) < count {
        let payload = TreeRequest { epoch: large.epoch(), page: pages.len() as u64 }.to_element();
        if let Some(s) = stanzas.as_deref_mut() {
            s.request("tree request", &payload);
        }
        let response = handle(&large.service, iq(&large.owner().jid(), group_jid(&large.id), IqKind::Get, payload)).await;
        if let Some(s) = stanzas.as_deref_mut() {
            s.response("tree page", &response);
        }
        let page = TreePage::parse(response.payload.as_ref().expect("a tree page")).unwrap();
        count = page.pages;
        pages.push(page.nodes);
    }
    pages
}

/// A new member's fetch and verification of the current tree against
/// `from_external` on the tree inline: (median fetch + verify ms, median
/// inline ms, pages, tree octets).
async fn tree_times(plan: &Plan, large: &mut Large) -> (f64, f64, usize, usize) {
    let owner = large.owner();
    let crypto = owner.provider.crypto();
    let without = bytes(&large.group.export_group_info(crypto, &owner.signer, false).unwrap());
    let with = bytes(&large.group.export_group_info(crypto, &owner.signer, true).unwrap());
    let (mut fetched, mut inline) = (Vec::new(), Vec::new());
    let mut stanzas = Stanzas::new(&large.service);
    let mut shape = (0, 0);
    for run in 0..=plan.fetches {
        let t = Instant::now();
        let (gi, none) = mls::group_info(&without, &large.id).unwrap();
        assert!(none.is_none(), "a GroupInfo without the tree");
        let pages = fetch_tree(large, (run == 0).then_some(&mut stanzas)).await;
        let tree = mls::tree_from_pages(&pages).unwrap();
        PublicGroup::from_external(crypto, &MemoryStorage::default(), tree, gi, ProposalStore::new()).unwrap();
        let fetch_time = ms(t.elapsed());

        let t = Instant::now();
        let (gi, tree) = mls::group_info(&with, &large.id).unwrap();
        PublicGroup::from_external(crypto, &MemoryStorage::default(), tree.expect("the tree inline"), gi, ProposalStore::new())
            .unwrap();
        let inline_time = ms(t.elapsed());
        if run > 0 {
            fetched.push(fetch_time);
            inline.push(inline_time);
        }
        shape = (pages.len(), pages.iter().map(Vec::len).sum());
    }
    merge(&mut large.stanzas, stanzas);
    (median(fetched), median(inline), shape.0, shape.1)
}

/// `from`'s largest and failures, in `into`.
fn merge(into: &mut Stanzas, from: Stanzas) {
    into.seen(from.largest, &from.largest_what);
    into.over.extend(from.over);
}

/// Every member's device on the group's live feed, as members online.
async fn join_feed(store: &xmpp_mls::store::Store, large: &Large) {
    for chunk in large.people.chunks(512) {
        futures::future::join_all(chunk.iter().map(|p| {
            let entry = FeedEntry { device_id: p.device_id.clone(), full_jid: p.jid().to_string(), account: p.account.to_string() };
            joined(store, &large.id, entry)
        }))
        .await;
    }
}

/// One group size: growth, tree fetch, self-updates; failures in `over`.
async fn bench_size(plan: &Plan, n: usize, figures: &mut Vec<Figure>, over: &mut Vec<String>) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = service(dir.path(), "[groups]\nmax_members = 10000\n");
    let people: Vec<Person> = (0..n).map(|i| Person::new("m", i)).collect();
    publish(&store, &people).await;

    let t = Instant::now();
    let (mut large, adds, batches) = grow(service, people).await;
    let (ours, raw): (Vec<f64>, Vec<f64>) = adds.into_iter().unzip();
    let members: Vec<usize> = batches.iter().map(|b| b.0).collect();
    println!(
        "# {n}: grown in {:.1} s by {} add commits of {:?} members; largest so far {} octets ({})",
        t.elapsed().as_secs_f64(),
        batches.len(),
        members,
        large.stanzas.largest,
        large.stanzas.largest_what,
    );
    let (ours, raw) = (median(ours), median(raw));
    let typical = median(members.iter().map(|&m| m as f64).collect());
    let baseline = format!("openmls PublicGroup, {typical:.0} adds a commit");
    figures.push(Figure::new(format!("add_accept_large_{n}"), ours, "ms", ours / raw, baseline));
    let full = median(batches.iter().map(|b| b.1 as f64).collect()) / large.stanzas.max_payload as f64;
    let count = batches.len() as f64;
    figures.push(Figure::new(format!("add_batches_{n}"), count, "commits", full, "median bundle / limits.max_payload_size"));

    let (fetched, inline, pages, octets) = tree_times(plan, &mut large).await;
    figures.push(Figure::new(format!("tree_fetch_verify_{n}"), fetched, "ms", fetched / inline, "from_external on the tree inline"));
    let ratio = octets as f64 / PROSODY_C2S as f64;
    figures.push(Figure::new(format!("tree_pages_{n}"), pages as f64, "pages", ratio, format!("tree of {octets} octets / {PROSODY_C2S}")));

    let t = Instant::now();
    join_feed(&store, &large).await;
    println!("# {n}: every device on the feed in {:.1} s", t.elapsed().as_secs_f64());
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    // One unmeasured commit first: caches, and the owner's path filled.
    for i in 0..=plan.commits {
        let bundle = self_update(&mut large.group, &large.people[0], false);
        let payload = bundle.to_element();
        let octets = String::from(&payload).len();
        if i == 0 {
            let limit = large.stanzas.max_payload as f64;
            let name = format!("self_update_bundle_{n}");
            figures.push(Figure::new(name, octets as f64, "octets", octets as f64 / limit, "limits.max_payload_size"));
        }
        match large.commit("self-update bundle", payload, &bundle.commit).await {
            Ok((o, r)) if i > 0 => {
                ours.push(o);
                raw.push(r);
            }
            Ok(_) => {}
            Err(e) => {
                let refused = format!("the service refused a self-update bundle of {octets} octets: {e}");
                println!("# {n}: {refused}");
                large.stanzas.over.push(refused);
                break;
            }
        }
    }
    if !ours.is_empty() {
        let (ours, raw) = (median(ours), median(raw));
        let baseline = format!("openmls PublicGroup, no inline tree, {n} devices on the feed");
        figures.push(Figure::new(format!("commit_accept_large_{n}"), ours, "ms", ours / raw, baseline));
    }

    let s = &large.stanzas;
    println!("# {n}: largest stanza: {}", s.largest_what);
    let largest = s.largest as f64;
    figures.push(Figure::new(format!("largest_stanza_{n}"), largest, "octets", largest / PROSODY_C2S as f64, "Prosody c2s limit 262144"));
    over.extend(s.over.iter().map(|o| format!("{n} members: {o}")));
    store.close().await;
    println!("# {n}: {:.0} s", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let cli = Args::parse();
    let plan = Plan::new(cli.quick);
    let (mut figures, mut over) = (Vec::new(), Vec::new());
    for &n in &plan.sizes {
        bench_size(&plan, n, &mut figures, &mut over).await;
    }
    cli.write_json("large", &figures);
    println!("# bench_large: {:.0} s", started.elapsed().as_secs_f64());
    assert!(over.is_empty(), "over the service's limits:\n{}", over.join("\n"));
}
