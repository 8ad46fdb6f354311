//! Ignition file entries: the data URLs MCO writes and reads, and edits of one path
//! inside a MachineConfig that leave every other file and field alone.

use base64::Engine;

use crate::model::{
    FileContents, IgnitionConfig, IgnitionFile, IgnitionMeta, MachineConfig, Storage,
};

pub const POLICY_JSON_PATH: &str = "/etc/containers/policy.json";
pub const SIGSTORE_YAML_PATH: &str = "/etc/containers/registries.d/sigstore-registries.yaml";
/// Where CRI-O looks for a namespace's signature policy (`signature_policy_dir`).
pub const NAMESPACE_POLICY_DIR: &str = "/etc/crio/policies/";

pub fn namespace_policy_path(namespace: &str) -> String {
    format!("{NAMESPACE_POLICY_DIR}{namespace}.json")
}

/// The Ignition spec of MachineConfigs we create (accepted by every OpenShift release
/// that has ClusterImagePolicy, and by the `ignition-validate` available for tests).
pub const CREATED_IGNITION_VERSION: &str = "3.2.0";

/// `data:text/plain;charset=utf-8;base64,…` as MCO's `dataurl.EncodeBytes` writes text.
pub fn encode_data_url(contents: &str) -> String {
    const PREFIX: &str = "data:text/plain;charset=utf-8;base64,";
    let mut url = String::with_capacity(PREFIX.len() + contents.len().div_ceil(3) * 4);
    url.push_str(PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(contents, &mut url);
    url
}

/// Decodes an Ignition `contents.source` data URL (base64 or percent-encoded).
pub fn decode_data_url(source: &str) -> Result<Vec<u8>, String> {
    let url = data_url::DataUrl::process(source).map_err(|e| format!("not a data URL: {e:?}"))?;
    let (body, _) = url
        .decode_to_vec()
        .map_err(|e| format!("data URL body does not decode: {e:?}"))?;
    Ok(body)
}

/// The file entry MCO's `NewIgnFileBytesOverwriting` makes.
pub fn file_entry(path: &str, contents: &str) -> IgnitionFile {
    IgnitionFile {
        path: path.to_string(),
        contents: Some(FileContents {
            source: Some(encode_data_url(contents).into()),
            ..Default::default()
        }),
        mode: Some(420),
        overwrite: Some(true),
        ..Default::default()
    }
}

/// The contents of `path` in this MachineConfig, if it writes that path.
pub fn read_file(mc: &MachineConfig, path: &str) -> Option<Result<String, String>> {
    let file = mc.files().iter().rev().find(|f| f.path == path)?;
    Some(file_text(file))
}

fn file_text(file: &IgnitionFile) -> Result<String, String> {
    let contents = file.contents.as_ref();
    if let Some(c) = contents.and_then(|c| c.compression.as_deref()) {
        if !c.is_empty() {
            return Err(format!("{}: compression {c:?} is not supported", file.path));
        }
    }
    let source = contents
        .and_then(|c| c.source.as_deref())
        .unwrap_or("data:,");
    let bytes = decode_data_url(source).map_err(|e| format!("{}: {e}", file.path))?;
    String::from_utf8(bytes).map_err(|_| format!("{}: contents are not UTF-8", file.path))
}

/// Puts this entry in place of the one for the same path, or appends it.
pub fn set_file(config: &mut IgnitionConfig, entry: IgnitionFile) {
    let files = config
        .storage
        .get_or_insert_with(Storage::default)
        .files
        .get_or_insert_with(Vec::new);
    match files.iter_mut().find(|f| f.path == entry.path) {
        Some(existing) => {
            // Keep fields we do not own (user, group, append…) where they are.
            existing.contents = entry.contents;
            existing.mode = entry.mode;
            existing.overwrite = entry.overwrite;
        }
        None => files.push(entry),
    }
}

/// Removes every entry for `path`, leaving the rest of the config as it was.
pub fn remove_file(config: &mut IgnitionConfig, path: &str) {
    if let Some(storage) = config.storage.as_mut() {
        if let Some(files) = storage.files.as_mut() {
            files.retain(|f| f.path != path);
        }
    }
}

/// Puts the namespaces' policy files in place of every such file there was: right after
/// policy.json where there is one (where the MCO writes them), else at the end. The same
/// input gives the same order, whatever the order before.
pub fn set_namespace_files(config: &mut IgnitionConfig, entries: Vec<IgnitionFile>) {
    let files = config
        .storage
        .get_or_insert_with(Storage::default)
        .files
        .get_or_insert_with(Vec::new);
    files.retain(|f| !is_namespace_policy(&f.path));
    let at = files
        .iter()
        .position(|f| f.path == POLICY_JSON_PATH)
        .map_or(files.len(), |i| i + 1);
    files.splice(at..at, entries);
    if files.is_empty() && config.storage.as_ref().is_some_and(|s| s.other.is_empty()) {
        config.storage = None;
    }
}

/// A namespace's policy file: `/etc/crio/policies/<namespace>.json`.
pub fn is_namespace_policy(path: &str) -> bool {
    path.strip_prefix(NAMESPACE_POLICY_DIR)
        .is_some_and(|name| name.ends_with(".json") && !name.contains('/'))
}

/// A new Ignition config holding exactly these files.
pub fn new_config(files: Vec<IgnitionFile>) -> IgnitionConfig {
    IgnitionConfig {
        ignition: Some(IgnitionMeta {
            version: CREATED_IGNITION_VERSION.to_string(),
            ..Default::default()
        }),
        storage: Some(Storage {
            files: Some(files),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_round_trip_and_read_percent_encoding() {
        let url = encode_data_url("docker:\n  example.com:\n    use-sigstore-attachments: true\n");
        assert_eq!(
            url,
            "data:text/plain;charset=utf-8;base64,ZG9ja2VyOgogIGV4YW1wbGUuY29tOgogICAgdXNlLXNpZ3N0b3JlLWF0dGFjaG1lbnRzOiB0cnVlCg=="
        );
        assert_eq!(
            decode_data_url(&url).unwrap(),
            b"docker:\n  example.com:\n    use-sigstore-attachments: true\n"
        );
        assert_eq!(
            decode_data_url("data:,%7B%22a%22%3A1%7D").unwrap(),
            b"{\"a\":1}"
        );
        assert!(decode_data_url("http://x").is_err());
    }

    #[test]
    fn set_and_remove_keep_other_files() {
        let mut cfg = new_config(vec![file_entry("/etc/containers/registries.conf", "x")]);
        set_file(&mut cfg, file_entry(POLICY_JSON_PATH, "{}"));
        set_file(&mut cfg, file_entry(POLICY_JSON_PATH, "{ }"));
        let files = cfg.storage.as_ref().unwrap().files.as_ref().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "/etc/containers/registries.conf");
        remove_file(&mut cfg, POLICY_JSON_PATH);
        assert_eq!(
            cfg.storage.as_ref().unwrap().files.as_ref().unwrap().len(),
            1
        );
    }
}
