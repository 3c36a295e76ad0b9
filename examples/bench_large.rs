//! Large groups through the service (issue 24: GroupInfos and Welcomes
//! without the ratchet tree, the tree served in pages by
//! `<tree epoch page/>`, Commits larger than a stanza in parts), every
//! stanza held to the service's DEFAULT limits. For groups of 1,024, 4,096
//! and 10,000 (`--quick`: 1,024 and 4,096), on a fresh SQLite store, a
//! service with the default configuration (`groups.max_members` is 10,000):
//!
//! - the group grown as a client grows it: the owner creates it alone (a
//!   GroupInfo with the tree, tiny), then adds every other member's
//!   KeyPackage in commit bundles as large as fit the default
//!   `limits.max_payload_size` (the bundle's serialised size measured; the
//!   first try is 2,048, then as many as the last size suggests, shrunk by
//!   the ratio of the limit to its size until it fits), their GroupInfo and
//!   Welcome without the tree; `add_batches_{n}` and `add_accept_large_{n}`
//!   (the service against openmls `PublicGroup` on the same commits);
//! - `tree_fetch_verify_{n}`: a new member's fetch of every page of the
//!   current tree through `Service::handle_iq` (pages sized by the default
//!   limits) and its verification (`tree_from_pages`, then
//!   `PublicGroup::from_external` with a GroupInfo without the tree: tree
//!   hash against the GroupContext, every signature), against
//!   `from_external` on the same tree inline in the GroupInfo;
//!   `tree_pages_{n}`, with the tree's octets against 262144;
//! - `commit_accept_large_{n}`: the service accepting the owner's
//!   self-update (GroupInfo without the tree) with every member's device
//!   on the live feed (so its answer holds a copy of the commit for each
//!   of them), against openmls `PublicGroup` alone processing and merging
//!   the same commit (kept in step with every commit of the run). A bundle
//!   over `limits.max_payload_size` is sent as a client sends it: the
//!   Commit uploaded in `<part/>`s first, the bundle naming it; the time
//!   is the uploads' and the bundle's. `self_update_commit_{n}`: the first
//!   Commit's octets against `limits.max_payload_size`. Adds carry no
//!   UpdatePath, so in a group grown this way every parent node off the
//!   owner's direct path is blank and its self-update encrypts a path
//!   secret to each other leaf: O(n), larger than a payload from about
//!   3,000 members on (about 80 octets a member);
//! - `commit_fetch_{n}`: a member's fetch of the last self-update in
//!   parts (`<part position offset/>`) when the feed named it, against
//!   openmls `PublicGroup` applying it;
//! - `largest_stanza_{n}`: the largest payload or stanza of the size's run
//!   (every request payload, every result payload, every message the
//!   service sends: Welcomes, fan-out), in octets of serialised XML,
//!   against Prosody's default c2s stanza limit (262144);
//! - `stanzas_over_limit_{n}`: how many of them are over the default limit
//!   that applies to them (`Limits::default()`): a request's payload over
//!   `limits.max_payload_size` or its IQ over Prosody's c2s 262144 (what a
//!   client may send); a result or message over `limits.max_stanza_out`
//!   (what the service may send). Its ratio is the largest of a stanza's
//!   octets to its limit; a `#` line names the kinds over.
//!
//! A fan-out's copies are counted by their sizes as the service measures
//! them (`Copies::sizes`: the stanza serialised once, each `to` escaped).
//!
//! If any stanza was over a default limit (or a service refused a
//! request), the run prints `# NOT WITHIN LIMITS: ...` (or `# REFUSED:
//! ...`) once the figures are printed and written, and exits with 1.
//!
//! `cargo run --release --example bench_large -- [--quick] [--json PATH]`
//! prints one line per figure, `name: value unit (ratio vs baseline)`;
//! `--json` also writes them as bench_paths does (`"bench": "large"`).

#[path = "common/bench.rs"]
mod bench;

use std::sync::Arc;
use std::time::Instant;

use minidom::Element;
use openmls::group::{MlsGroup, ProposalStore, PublicGroup};
use openmls::prelude::KeyPackage;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use xmpp_mls::config::Limits;
use xmpp_mls::protocol::groups::{page_octets, CommitBundle, GroupMessage, Part, PartRequest, PartUpload, Parts, TreePage, TreeRequest};
use xmpp_mls::protocol::mls;
use xmpp_mls::service::{IqKind, IqRequest, Response, Service};
use xmpp_mls::store::FeedEntry;

use bench::*;

/// Prosody's default c2s stanza limit (256 KiB): the largest stanza a
/// client's own server takes from it.
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

/// A default limit that a stanza is held to.
#[derive(Clone, Copy)]
struct Limit {
    name: &'static str,
    octets: usize,
}

/// The stanzas of one kind over one default limit.
struct Over {
    what: String,
    limit: Limit,
    count: usize,
    largest: usize,
}

/// Every payload and stanza of one size's run against the default limits
/// (`Limits::default()`, whatever the service that handled it allows):
/// the largest, the closest to its limit, and those over.
struct Stanzas {
    max_payload: Limit,
    c2s: Limit,
    max_stanza_out: Limit,
    largest: usize,
    largest_what: String,
    /// The largest ratio of a stanza's octets to its limit, and which.
    worst: (f64, String),
    over: Vec<Over>,
}

impl Stanzas {
    fn new() -> Self {
        let limits = Limits::default();
        Stanzas {
            max_payload: Limit { name: "limits.max_payload_size", octets: limits.max_payload_size },
            c2s: Limit { name: "Prosody's c2s limit", octets: PROSODY_C2S },
            max_stanza_out: Limit { name: "limits.max_stanza_out", octets: limits.max_stanza_out },
            largest: 0,
            largest_what: String::new(),
            worst: (0.0, String::new()),
            over: Vec::new(),
        }
    }

    fn seen(&mut self, octets: usize, what: &str) {
        if octets > self.largest {
            (self.largest, self.largest_what) = (octets, what.to_owned());
        }
    }

    /// One stanza of `what` against its limits, as (octets, limit): over
    /// (once) if over any of them.
    fn check(&mut self, what: &str, checks: &[(usize, Limit)]) {
        for &(octets, limit) in checks {
            let ratio = octets as f64 / limit.octets as f64;
            if ratio > self.worst.0 {
                self.worst = (ratio, format!("{what} {octets} octets / {} {}", limit.name, limit.octets));
            }
        }
        let Some(&(octets, limit)) = checks.iter().find(|(octets, limit)| *octets > limit.octets) else { return };
        self.over_by(what, limit, 1, octets);
    }

    fn over_by(&mut self, what: &str, limit: Limit, count: usize, largest: usize) {
        match self.over.iter_mut().find(|o| o.what == what && o.limit.name == limit.name) {
            Some(o) => (o.count, o.largest) = (o.count + count, o.largest.max(largest)),
            None => self.over.push(Over { what: what.to_owned(), limit, count, largest }),
        }
    }

    /// A request as its client sends it: the payload within
    /// limits.max_payload_size, the IQ around it within Prosody's c2s
    /// limit; the payload's octets.
    fn request(&mut self, what: &str, req: &IqRequest) -> usize {
        let payload = String::from(&req.payload).len();
        let kind = match req.kind {
            IqKind::Get => "get",
            IqKind::Set => "set",
        };
        let iq = format!("<iq type=\"{kind}\" id=\"{}\" to=\"{}\"></iq>", req.id, req.to).len() + payload;
        let (max_payload, c2s) = (self.max_payload, self.c2s);
        self.seen(payload, what);
        self.check(what, &[(payload, max_payload), (iq, c2s)]);
        payload
    }

    /// What the service answers and sends, each within limits.max_stanza_out.
    fn response(&mut self, what: &str, response: &Response) {
        let limit = self.max_stanza_out;
        if let Some(p) = &response.payload {
            let octets = String::from(p).len();
            let what = format!("{what}, result <{}/>", p.name());
            self.seen(octets, &what);
            self.check(&what, &[(octets, limit)]);
        }
        let copies = response.copies.iter().chain(response.issued.iter().map(|i| &i.copies));
        let sent = copies.flat_map(|c| c.sizes().map(|octets| (octets, "message")));
        let sent: Vec<(usize, &str)> = sent.chain(response.messages.iter().map(|m| (String::from(m).len(), m.name()))).collect();
        for (octets, name) in sent {
            let what = format!("{what}, sent <{name}/>");
            self.seen(octets, &what);
            self.check(&what, &[(octets, limit)]);
        }
    }

    /// `from`'s stanzas too.
    fn merge(&mut self, from: Stanzas) {
        self.seen(from.largest, &from.largest_what);
        if from.worst.0 > self.worst.0 {
            self.worst = from.worst;
        }
        for o in from.over {
            self.over_by(&o.what, o.limit, o.count, o.largest);
        }
    }

    fn over_count(&self) -> usize {
        self.over.iter().map(|o| o.count).sum()
    }

    /// The kinds over, e.g. "self-update bundle x6, up to 449247 octets >
    /// limits.max_payload_size 245760".
    fn over_kinds(&self) -> String {
        let kinds = self.over.iter().map(|o| {
            format!("{} x{}, up to {} octets > {} {}", o.what, o.count, o.largest, o.limit.name, o.limit.octets)
        });
        kinds.collect::<Vec<_>>().join("; ")
    }
}

/// The owner's group and openmls' PublicGroup kept in step with it, at
/// the service in `id`.
struct Large {
    service: Arc<Service>,
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

    /// The owner's request of `payload` to the group, measured, and the
    /// service's answer, measured if it is one: (answer, ms).
    async fn send(&mut self, what: &str, payload: Element) -> (Result<Response, String>, f64) {
        let req = iq(&self.owner().jid(), group_jid(&self.id), IqKind::Set, payload);
        self.stanzas.request(what, &req);
        let t = Instant::now();
        let answer = self.service.handle_iq(&req).await;
        let took = ms(t.elapsed());
        if let Ok(response) = &answer {
            self.stanzas.response(what, response);
        }
        (answer.map_err(|e| format!("{e} ({e:?})")), took)
    }

    /// `bundle` as a client sends it: itself if within limits.max_payload_size,
    /// else named, its Commit uploaded in parts first; and the uploads' ms.
    async fn within_limit(&mut self, bundle: CommitBundle) -> Result<(Element, f64), String> {
        let max = self.stanzas.max_payload.octets;
        let inline = bundle.to_element();
        if String::from(&inline).len() <= max {
            return Ok((inline, 0.0));
        }
        let parts = Parts::of(&bundle.commit);
        let mut took = 0.0;
        for (i, octets) in bundle.commit.chunks(page_octets(max)).enumerate() {
            let upload = PartUpload { parts, offset: (i * page_octets(max)) as u64, octets: octets.to_vec() };
            let (answer, ms) = self.send("part upload", upload.to_element()).await;
            answer?;
            took += ms;
        }
        Ok((CommitBundle { parts: Some(parts), ..bundle }.to_element(), took))
    }

    /// Sends the owner's pending commit `bundle` as a client does (see
    /// [`Self::within_limit`]) and merges it, and the PublicGroup applies
    /// it: (service ms, openmls ms, the answer). A refusal is returned as
    /// it is, the commit dropped.
    async fn commit(&mut self, what: &str, bundle: CommitBundle) -> Result<(f64, f64, Response), String> {
        let commit = bundle.commit.clone();
        let sent = match self.within_limit(bundle).await {
            Ok((payload, uploads)) => match self.send(what, payload).await {
                (Ok(response), ms) => Ok((response, uploads + ms)),
                (Err(e), _) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (response, ours) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                self.group.clear_pending_commit(self.people[0].provider.storage()).unwrap();
                return Err(e);
            }
        };
        let t = Instant::now();
        public_group_apply(&mut self.pg, self.people[0].provider.crypto(), &self.pg_storage, &commit, &self.id);
        let raw = ms(t.elapsed());
        self.group.merge_pending_commit(&self.people[0].provider).unwrap();
        Ok((ours, raw, response))
    }

    /// A member's fetch of the archived message at `position` in parts:
    /// (its octets, ms).
    async fn fetch_parts(&mut self, position: u64, size: u64) -> (Vec<u8>, f64) {
        let member = self.people[1].jid();
        let (mut message, t) = (Vec::new(), Instant::now());
        while (message.len() as u64) < size {
            let payload = PartRequest { position, offset: message.len() as u64 }.to_element();
            let req = iq(&member, group_jid(&self.id), IqKind::Get, payload);
            self.stanzas.request("part request", &req);
            let response = handle(&self.service, req).await;
            self.stanzas.response("part", &response);
            message.extend(Part::parse(response.payload.as_ref().expect("a part")).unwrap().octets);
        }
        (message, ms(t.elapsed()))
    }
}

/// The group of `people` at `service`: created by the first alone, the
/// others added in batches as large as fit the default
/// limits.max_payload_size. Returns the group, the (service, openmls) ms
/// of each add commit and each batch's (members, bundle octets).
async fn grow(service: Arc<Service>, people: Vec<Person>) -> (Large, Vec<(f64, f64)>, Vec<(usize, usize)>) {
    let id: [u8; 16] = rand::random();
    let stanzas = Stanzas::new();
    let (group, create) = create_request(&people[..1], id);
    let owner = &people[0];
    let info = group.export_group_info(owner.provider.crypto(), &owner.signer, true).unwrap();
    let (gi, tree) = mls::group_info(&bytes(&info), &id).unwrap();
    let pg_storage = MemoryStorage::default();
    let (pg, _) = PublicGroup::from_external(owner.provider.crypto(), &pg_storage, tree.unwrap(), gi, ProposalStore::new()).unwrap();
    let mut large = Large { service, people, id, group, pg, pg_storage, stanzas };
    large.stanzas.request("create", &create);
    let response = handle(&large.service, create).await;
    large.stanzas.response("create", &response);

    let t = Instant::now();
    let kps: Vec<KeyPackage> = large.people[1..].iter().map(Person::key_package).collect();
    println!("# {} KeyPackages made in {:.1} s", kps.len(), t.elapsed().as_secs_f64());
    let max = large.stanzas.max_payload.octets;
    let (mut times, mut batches, mut next, mut guess) = (Vec::new(), Vec::new(), 0, 2048);
    while next < kps.len() {
        let mut k = guess.min(kps.len() - next);
        let (bundle, octets) = loop {
            let bundle = commit_bundle(&mut large.group, &large.people[0], &kps[next..next + k], false);
            let octets = String::from(&bundle.to_element()).len();
            // The next batch's first try: as many as this one's octets a member suggest.
            guess = (k * max / octets).max(1);
            if octets <= max {
                break (bundle, octets);
            }
            large.group.clear_pending_commit(large.people[0].provider.storage()).unwrap();
            assert!(k > 1, "one KeyPackage's add bundle is {octets} octets, over limits.max_payload_size {max}");
            k = guess.min(k - 1);
        };
        let what = format!("add bundle of {k}");
        let (ours, raw, _) = large.commit(&what, bundle).await.unwrap_or_else(|e| panic!("the service refused the {what} at {} members: {e}", next + 1));
        times.push((ours, raw));
        batches.push((k, octets));
        next += k;
    }
    assert_eq!(large.group.members().count(), large.people.len());
    assert_eq!(large.pg.members().count(), large.people.len());
    (large, times, batches)
}

/// Every page of the tree of the group's current epoch, fetched from the
/// default service as the owner's account (a member's), as a new member
/// would; each request and answer measured into `stanzas` if given.
async fn fetch_tree(large: &Large, mut stanzas: Option<&mut Stanzas>) -> Vec<Vec<u8>> {
    let (mut pages, mut count) = (Vec::new(), 1);
    while (pages.len() as u64) < count {
        let payload = TreeRequest { epoch: large.epoch(), page: pages.len() as u64 }.to_element();
        let req = iq(&large.owner().jid(), group_jid(&large.id), IqKind::Get, payload);
        if let Some(s) = stanzas.as_deref_mut() {
            s.request("tree request", &req);
        }
        let response = handle(&large.service, req).await;
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
    let mut stanzas = Stanzas::new();
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
    large.stanzas.merge(stanzas);
    (median(fetched), median(inline), shape.0, shape.1)
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

/// One group size: growth, tree fetch, self-updates; stanzas over the
/// default limits in `over`, requests the services refused in `refused`.
async fn bench_size(plan: &Plan, n: usize, figures: &mut Vec<Figure>, over: &mut Vec<String>, refused: &mut Vec<String>) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let section = Backend::Sqlite.new_store(dir.path());
    let (service, store) = service_on(&section, "");
    assert_eq!(service.max_stanza_out(), Limits::default().max_stanza_out, "the default service has the default limits");
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
    let full = median(batches.iter().map(|b| b.1 as f64).collect()) / large.stanzas.max_payload.octets as f64;
    let count = batches.len() as f64;
    figures.push(Figure::new(format!("add_batches_{n}"), count, "commits", full, "median bundle / limits.max_payload_size"));

    let (fetched, inline, pages, octets) = tree_times(plan, &mut large).await;
    figures.push(Figure::new(format!("tree_fetch_verify_{n}"), fetched, "ms", fetched / inline, "from_external on the tree inline"));
    let ratio = octets as f64 / PROSODY_C2S as f64;
    figures.push(Figure::new(format!("tree_pages_{n}"), pages as f64, "pages", ratio, format!("tree of {octets} octets / {PROSODY_C2S}")));

    let t = Instant::now();
    join_feed(&store, &large).await;
    println!("# {n}: every device on the feed in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (mut ours, mut raw, mut named) = (Vec::new(), Vec::new(), None);
    // One unmeasured commit first: caches, and the owner's path filled.
    for i in 0..=plan.commits {
        let bundle = self_update(&mut large.group, &large.people[0], false);
        let octets = bundle.commit.len();
        if i == 0 {
            let limit = large.stanzas.max_payload.octets as f64;
            let name = format!("self_update_commit_{n}");
            figures.push(Figure::new(name, octets as f64, "octets", octets as f64 / limit, "limits.max_payload_size"));
        }
        match large.commit("self-update bundle", bundle).await {
            Ok((o, r, response)) => {
                let copy = response.copies.as_ref().and_then(|c| c.stanzas().next());
                let copy = copy.as_ref().and_then(GroupMessage::find).map(Result::unwrap);
                named = copy.and_then(|m| Some((m.position?, m.parts?.size, r)));
                if i > 0 {
                    ours.push(o);
                    raw.push(r);
                }
            }
            Err(e) => {
                let e = format!("the service refused a self-update of {octets} octets: {e}");
                println!("# {n}: {e}");
                refused.push(format!("{n} members: {e}"));
                break;
            }
        }
    }
    println!("# {n}: {} self-updates in {:.1} s", ours.len() + 1, t.elapsed().as_secs_f64());
    if !ours.is_empty() {
        let (ours, raw) = (median(ours), median(raw));
        let baseline = format!("openmls PublicGroup, no inline tree, {n} devices on the feed");
        figures.push(Figure::new(format!("commit_accept_large_{n}"), ours, "ms", ours / raw, baseline));
    }
    if let Some((position, size, apply)) = named {
        let mut times = Vec::new();
        for _ in 0..plan.fetches {
            let (message, took) = large.fetch_parts(position, size).await;
            assert_eq!(message.len() as u64, size, "the whole Commit");
            times.push(took);
        }
        let took = median(times);
        let baseline = format!("openmls PublicGroup applying it, {size} octets");
        figures.push(Figure::new(format!("commit_fetch_{n}"), took, "ms", took / apply, baseline));
    }

    let s = &large.stanzas;
    println!("# {n}: largest stanza: {}", s.largest_what);
    let largest = s.largest as f64;
    figures.push(Figure::new(format!("largest_stanza_{n}"), largest, "octets", largest / PROSODY_C2S as f64, "Prosody c2s limit 262144"));
    let count = s.over_count();
    let baseline = format!("largest / its default limit: {}", s.worst.1);
    figures.push(Figure::new(format!("stanzas_over_limit_{n}"), count as f64, "stanzas", s.worst.0, baseline));
    match count {
        0 => println!("# {n}: every stanza within the default limits"),
        _ => {
            println!("# {n}: over the default limits: {}", s.over_kinds());
            over.push(format!("{n} members: {}", s.over_kinds()));
        }
    }
    drop(large);
    store.close().await;
    println!("# {n}: {:.0} s", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let cli = Args::parse();
    let plan = Plan::new(cli.quick);
    let (mut figures, mut over, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for &n in &plan.sizes {
        bench_size(&plan, n, &mut figures, &mut over, &mut refused).await;
    }
    cli.write_json("large", &figures);
    println!("# bench_large: {:.0} s", started.elapsed().as_secs_f64());
    if !refused.is_empty() {
        println!("# REFUSED: {}", refused.join(" | "));
    }
    if !over.is_empty() {
        println!("# NOT WITHIN LIMITS: {}", over.join(" | "));
    }
    if !(refused.is_empty() && over.is_empty()) {
        std::process::exit(1);
    }
}
