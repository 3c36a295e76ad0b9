//! Three people, one with two devices, talking in an MLS group through an
//! xmpp-mls service. Used by `scripts/demo`; every line it prints is what a
//! device actually received.
//!
//! `cargo run --example group_chat -- SERVER SERVICE [DIR]` where SERVER is
//! the c2s address (host:port) and the accounts alice, bob and carol
//! (password `<name>-password`) exist on the service's domain. A device
//! whose state file `DIR/<name>-<resource>.sqlite3` exists (e.g. one set up
//! with the CLI) is used as it is; the others are new (DIR: a temporary one).

use std::path::Path;
use std::time::Duration;

use xmpp_mls::client::{ConnectOptions, Device, GroupClient, GroupEvent, KdfParams, Session, Vault};
use xmpp_parsers::jid::{BareJid, Jid};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `user`'s session as `resource`.
async fn connect(server: &str, service: &Jid, user: &str, resource: &str) -> Result<Session> {
    let domain = service.domain().as_str().split_once('.').map(|(_, d)| d).unwrap_or("example.org");
    let mut opts = ConnectOptions::new(BareJid::new(&format!("{user}@{domain}"))?, format!("{user}-password"));
    opts.server = Some(server.to_owned());
    opts.insecure_tcp = true;
    opts.resource = Some(resource.to_owned());
    Ok(Session::connect(opts).await?)
}

/// `user`'s device `resource` online: the one in its state file in `dir`
/// if there is one, else a new one, published with 5 KeyPackages.
async fn device(server: &str, service: &Jid, dir: &Path, user: &str, resource: &str) -> Result<GroupClient> {
    let session = connect(server, service, user, resource).await?;
    let account = session.jid().to_bare();
    let path = dir.join(format!("{user}-{resource}.sqlite3"));
    let device = if path.exists() {
        let device = Device::open(&path, &account)?;
        println!("  {user}/{resource}: device {} online again, from {}", device.id(), path.display());
        device
    } else {
        let device = Device::create(&path, account, Some(resource.into()))?;
        session.publish_device(service, &device.item(None)).await?;
        device.refill(&session, service, 5, true).await?;
        println!("  {user}/{resource}: device {} published with 5 KeyPackages", device.id());
        device
    };
    Ok(GroupClient::start(session, device, service.clone()).await?)
}

/// Waits until every device has applied the commit that started `epoch`.
async fn follow(devices: &mut [(&str, GroupClient)], group: &BareJid, epoch: u64) -> Result<()> {
    for (label, d) in devices.iter_mut() {
        while d.epoch(group)? < epoch {
            if d.next_event(Duration::from_secs(10)).await?.is_none() {
                return Err(format!("{label} heard nothing for 10 s").into());
            }
        }
    }
    Ok(())
}

/// The group's members as `account/device`, noting those that are not
/// among `devices` (not running here, so they read their Welcome later).
async fn members(devices: &mut [(&str, GroupClient)], group: &BareJid) -> Result<String> {
    let ours: Vec<String> = devices.iter().map(|(_, d)| d.device().id().to_owned()).collect();
    let list = devices[0].1.members(group).await?;
    Ok(list
        .iter()
        .map(|(a, d)| {
            let away = if ours.contains(d) { "" } else { " (not running here: its Welcome waits in the inbox until it connects)" };
            format!("{a}/{d}{away}")
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Prints what each device receives until every one has seen `n` messages
/// (its own message counts through its echo).
async fn show(devices: &mut [(&str, GroupClient)], n: usize) -> Result<()> {
    for (label, d) in devices.iter_mut() {
        let mut seen = 0;
        while seen < n {
            match d.next_event(Duration::from_secs(10)).await? {
                Some(GroupEvent::Message { account, content, .. }) => {
                    seen += 1;
                    println!("    {label:<14} got from {account}: {}", content.body().unwrap_or_default());
                }
                Some(GroupEvent::Delivered { stanza_id, .. }) => {
                    seen += 1;
                    println!("    {label:<14} echo of its own message (stanza-id {stanza_id})");
                }
                Some(GroupEvent::Removed { .. }) => {
                    println!("    {label:<14} was removed from the group");
                    break;
                }
                Some(_) => {}
                None => return Err(format!("{label} heard nothing for 10 s").into()),
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (server, service) = (args.get(1).ok_or("SERVER")?, Jid::new(args.get(2).ok_or("SERVICE")?)?);
    let temporary = tempfile::tempdir()?;
    let dir = args.get(3).map_or(temporary.path(), Path::new);

    println!("Four devices come online:");
    let mut laptop = device(server, &service, dir, "alice", "laptop").await?;
    let phone = device(server, &service, dir, "alice", "phone").await?;
    let bob = device(server, &service, dir, "bob", "phone").await?;
    let carol = device(server, &service, dir, "carol", "pc").await?;

    let vault = Vault::create(&laptop.session, &service, "alice's long passphrase", KdfParams::default()).await?;
    laptop.attach_vault(vault, 1000);
    println!("\nalice's laptop keeps per-epoch snapshots and its sent messages in her vault (sealed)");
    let group = laptop.create().await?;
    println!("\nalice's laptop creates the group {group}");
    let domain = service.domain().as_str().split_once('.').map(|(_, d)| d).unwrap_or("example.org").to_owned();
    let people: Vec<BareJid> =
        ["alice", "bob", "carol"].iter().map(|u| BareJid::new(&format!("{u}@{domain}")).unwrap()).collect();
    let accepted = laptop.add(&group, &people).await?;
    println!("...and adds bob, carol and her own other devices in one commit (epoch {})", accepted.epoch);
    let mut all = vec![("alice/laptop", laptop), ("alice/phone", phone), ("bob/phone", bob), ("carol/pc", carol)];
    for (label, d) in all.iter_mut().skip(1) {
        loop {
            if let Some(GroupEvent::Joined { .. }) = d.next_event(Duration::from_secs(10)).await? {
                println!("  {label} received its Welcome and joined the live feed");
                break;
            }
        }
    }
    println!("  members: {}", members(&mut all, &group).await?);

    println!("\nalice writes from her laptop; everyone else, her phone included, receives it:");
    all[0].1.send_body(&group, "Hi all, welcome to the group!").await?;
    show(&mut all, 1).await?;

    println!("\nbob and carol answer:");
    all[2].1.send_body(&group, "Hello alice (and alice's phone)").await?;
    all[3].1.send_body(&group, "Hi! Nobody but us can read this.").await?;
    show(&mut all, 2).await?;

    println!("\nbob renews his keys (a commit); every device follows the new epoch:");
    let a = all[2].1.update(&group).await?;
    println!("  epoch {} accepted as {}", a.epoch, a.stanza_id);
    follow(&mut all, &group, a.epoch).await?;
    let mut checks = Vec::new();
    for (label, d) in all.iter_mut() {
        checks.push(format!("{label}={}", &d.epoch_check(&group)?[..8]));
    }
    println!("  epoch checks agree: {}", checks.join(" "));

    println!("\ncarol leaves; alice's phone commits her removal with its next message:");
    all[3].1.leave(&group).await?;
    loop {
        if let Some(GroupEvent::Proposed { .. }) = all[1].1.next_event(Duration::from_secs(10)).await? {
            break;
        }
    }
    all[1].1.send_body(&group, "Bye carol!").await?;
    show(&mut all[..3], 1).await?;
    show(&mut all[3..], 1).await?;
    println!("  members now: {}", members(&mut all[..3], &group).await?);

    println!("\nalice's phone goes offline; bob and alice's laptop go on, and bob renews his keys:");
    let (_, phone) = all.remove(1);
    let phone_state = phone.device().id().to_owned();
    phone.session.close().await;
    all[1].1.send_body(&group, "Is alice's phone still with us?").await?;
    all[0].1.send_body(&group, "It will read this later.").await?;
    show(&mut all[..2], 2).await?;
    let a = all[1].1.update(&group).await?;
    println!("  epoch {} while the phone is away; alice's laptop applies it, then writes:", a.epoch);
    follow(&mut all[..1], &group, a.epoch).await?;
    all[0].1.send_body(&group, "Even after a new epoch.").await?;
    show(&mut all[..2], 1).await?;

    println!("\nthe phone comes back and catches up from the archive (XEP-0313):");
    let mut phone = device(server, &service, dir, "alice", "phone").await?;
    assert_eq!(phone.device().id(), phone_state);
    phone.catch_up_all(&mut |what, done, total| println!("  {what}: {done}/{total} archived items")).await?;
    while let Some(e) = phone.next_event(Duration::from_millis(500)).await? {
        match e {
            GroupEvent::Message { account, content, .. } => {
                println!("    alice/phone    got from {account}: {}", content.body().unwrap_or_default())
            }
            GroupEvent::Epoch { epoch, .. } => println!("    alice/phone    applied the commit of epoch {epoch}"),
            _ => {}
        }
    }
    println!("  epoch checks agree: {}", phone.epoch_check(&group)? == all[0].1.epoch_check(&group)?);
    phone.session.close().await;

    println!("\nalice buys a tablet: with only her password and passphrase, it reads the group's history:");
    let session = connect(server, &service, "alice", "tablet").await?;
    let vault = Vault::open(&session, &service, "alice's long passphrase").await?;
    let account = session.jid().to_bare();
    let tablet = Device::create(&dir.join("alice-tablet.sqlite3"), account, Some("Tablet".into()))?;
    let mut tablet = GroupClient::start(session, tablet, service.clone()).await?;
    let history = tablet.read_history(&group, &vault).await?;
    for e in &history.entries {
        println!("    [epoch {}] {}: {}", e.epoch, e.account, e.content.body().unwrap_or_default());
    }
    println!("  ({} messages read, {} unreadable)", history.entries.len(), history.unreadable.len());
    tablet.session.close().await;
    for (_, d) in all {
        d.session.close().await;
    }
    Ok(())
}
