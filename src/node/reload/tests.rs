use super::*;

fn key(byte: u8) -> String {
    zmq::z85_encode(&[byte; 32]).expect("encode")
}

fn entry(name: &str, byte: u8, admin: bool) -> String {
    format!(
        r#"{{"name": "{name}", "public_key": "{}", "admin": {admin}}}"#,
        key(byte)
    )
}

fn file_text(entries: &[String]) -> String {
    format!(
        r#"{{"addresses": [{{"ip": "127.0.0.1", "port": 1, "internal_port": 2}}], "clients": [{}]}}"#,
        entries.join(", ")
    )
}

fn names(shared: &SharedClients) -> Vec<String> {
    shared
        .current()
        .clients()
        .iter()
        .map(|client| client.name.clone())
        .collect()
}

#[test]
fn a_sighup_swaps_a_good_list_in_and_keeps_the_old_one_on_a_broken_file() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_path_buf();
    let write = |text: &str| std::fs::write(&path, text).expect("write config");
    write(&file_text(&[
        entry("alice", 1, false),
        entry("bob", 2, false),
    ]));
    let first = crate::config::clients::reload_clients(&path, true).expect("a good file");
    let shared = Arc::new(SharedClients::new(first));
    let reload = ClientReload {
        clients: Some(Arc::clone(&shared)),
        path: path.clone(),
        peers_keyed: true,
    };

    write(&file_text(&[
        entry("bob", 2, true),
        entry("carol", 3, false),
    ]));
    let (level, line) = reload.on_sighup();
    assert_eq!(level, log::Level::Info, "{line}");
    assert_eq!(
        line,
        format!(
            "SIGHUP: reloaded clients from {}: 2 listed; added carol; removed alice; changed bob",
            path.display()
        )
    );
    assert_eq!(names(&shared), ["bob", "carol"]);

    let (level, line) = reload.on_sighup();
    assert_eq!(level, log::Level::Info, "{line}");
    assert!(line.ends_with(": 2 listed"), "{line}");

    write(r#"{"clients": [{"name": "dave", "public_key": "short"}]"#);
    let (level, line) = reload.on_sighup();
    assert_eq!(level, log::Level::Error, "{line}");
    assert!(
        line.starts_with("SIGHUP: clients not reloaded, the 2 listed before stay: "),
        "{line}"
    );
    assert!(line.contains("invalid JSON"), "{line}");
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(names(&shared), ["bob", "carol"]);

    write(&file_text(&[
        entry("dave", 4, false),
        entry("dave", 5, false),
    ]));
    let (level, line) = reload.on_sighup();
    assert_eq!(level, log::Level::Error, "{line}");
    assert!(line.contains("duplicate client name \"dave\""), "{line}");
    assert_eq!(names(&shared), ["bob", "carol"]);
}

#[test]
fn a_sighup_on_a_node_without_clients_changes_nothing_and_says_so() {
    let reload = ClientReload {
        clients: None,
        path: PathBuf::from("/nonexistent/config.json"),
        peers_keyed: false,
    };
    let (level, line) = reload.on_sighup();
    assert_eq!(level, log::Level::Warn);
    assert!(line.contains("a restart is needed"), "{line}");
}
