//! The URLs Twilio should call: from a public base URL, or from a deployed stack's outputs
//! (`aws cloudformation describe-stacks`, so AWS_PROFILE / AWS_REGION apply). The stack name
//! defaults to the one in samconfig.toml, as `sam deploy` does.

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

use super::twilio::one_line;

/// The five webhook URLs of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub sms: String,
    pub sms_fallback: String,
    pub voice: String,
    pub voice_fallback: String,
    pub status: String,
}

pub fn validate_http_url(what: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!("{what} {url:?} is not an http(s) URL")),
    }
}

impl Targets {
    /// `URL/sms`, `URL/voice`, `URL/status` and `URL/fallback` (the template's routes).
    pub fn from_public_base_url(base: &str) -> Result<Self, String> {
        let base = base.trim().trim_end_matches('/');
        validate_http_url("--public-base-url", base)?;
        if base.contains(['?', '#']) {
            return Err(format!(
                "--public-base-url {base:?} must not have a query or fragment"
            ));
        }
        Ok(Targets {
            sms: format!("{base}/sms"),
            sms_fallback: format!("{base}/fallback"),
            voice: format!("{base}/voice"),
            voice_fallback: format!("{base}/fallback"),
            status: format!("{base}/status"),
        })
    }
}

/// The stack outputs (template.yaml `Outputs`) holding the five URLs, in [`Targets`] order.
pub const STACK_OUTPUTS: [&str; 5] = [
    "SmsWebhookUrl",
    "SmsFallbackUrl",
    "VoiceWebhookUrl",
    "VoiceFallbackUrl",
    "StatusCallbackUrl",
];

/// The stack name `sam deploy` would use: `stack_name` of `[default.deploy.parameters]`, else
/// of `[default.global.parameters]`. `Ok(None)` when the file does not exist.
pub fn samconfig_stack(path: &Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let stack_of = |command: &str| {
        doc.get("default")?
            .get(command)?
            .get("parameters")?
            .get("stack_name")?
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(stack_of("deploy").or_else(|| stack_of("global")))
}

pub async fn from_stack(stack: &str) -> Result<Targets, String> {
    let stack = stack.trim();
    let stdout = describe_stack(stack, None, "--public-base-url").await?;
    parse_stack_outputs(stack, &stdout)
}

/// `aws cloudformation describe-stacks --stack-name STACK --output json`'s output (`path`: the
/// PATH to find `aws` on, default the process's); errors name `alternative`, the option to use
/// instead of `--stack`.
pub async fn describe_stack(
    stack: &str,
    path: Option<OsString>,
    alternative: &str,
) -> Result<Vec<u8>, String> {
    let stack = stack.trim();
    if stack.is_empty() {
        return Err("--stack needs a stack name".into());
    }
    let name = stack.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("aws");
        cmd.args(["cloudformation", "describe-stacks", "--stack-name", &name])
            .args(["--output", "json"])
            .stdin(std::process::Stdio::null());
        if let Some(path) = path {
            // Setting PATH on the child makes the program lookup use it.
            cmd.env("PATH", path);
        }
        cmd.output()
    })
    .await
    .map_err(|e| format!("running the aws CLI: {e}"))?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the aws CLI was not found on PATH (needed for --stack; install it, or use {alternative})"
            )
        } else {
            format!("could not run the aws CLI: {e}")
        }
    })?;
    if !output.status.success() {
        let detail = one_line(&String::from_utf8_lossy(&output.stderr));
        return Err(format!(
            "aws cloudformation describe-stacks --stack-name {stack} failed ({}): {}",
            output.status,
            if detail.is_empty() {
                "no error output"
            } else {
                &detail
            }
        ));
    }
    Ok(output.stdout)
}

pub fn parse_stack_outputs(stack: &str, stdout: &[u8]) -> Result<Targets, String> {
    let json: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("aws cloudformation describe-stacks printed invalid JSON: {e}"))?;
    let stack_json = json
        .get("Stacks")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .ok_or_else(|| {
            format!("aws cloudformation describe-stacks returned no stack named {stack}")
        })?;
    let status = stack_json
        .get("StackStatus")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let outputs = stack_json.get("Outputs").and_then(Value::as_array);
    let find = |key: &str| -> Option<String> {
        outputs?
            .iter()
            .find(|o| o.get("OutputKey").and_then(Value::as_str) == Some(key))
            .and_then(|o| o.get("OutputValue").and_then(Value::as_str))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let missing: Vec<&str> = STACK_OUTPUTS
        .into_iter()
        .filter(|k| find(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "stack {stack} (status {status}) has no output {}; is it deployed from this template.yaml? (or use --public-base-url)",
            missing.join(", ")
        ));
    }
    let get = |key: &str| -> Result<String, String> {
        let v = find(key).expect("checked above");
        validate_http_url(&format!("stack {stack} output {key}"), &v)?;
        Ok(v)
    };
    let [sms, sms_fallback, voice, voice_fallback, status] = STACK_OUTPUTS;
    Ok(Targets {
        sms: get(sms)?,
        sms_fallback: get(sms_fallback)?,
        voice: get(voice)?,
        voice_fallback: get(voice_fallback)?,
        status: get(status)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_base_url_gives_the_template_routes() {
        let t = Targets::from_public_base_url(" https://hooks.example.com/ ").unwrap();
        assert_eq!(t.sms, "https://hooks.example.com/sms");
        assert_eq!(t.sms_fallback, "https://hooks.example.com/fallback");
        assert_eq!(t.voice_fallback, "https://hooks.example.com/fallback");
        assert_eq!(t.status, "https://hooks.example.com/status");
        for bad in [
            "hooks.example.com",
            "ftp://x",
            "https://",
            "https://h/?a=1",
            "https://h/#x",
            "https://a b",
        ] {
            assert!(Targets::from_public_base_url(bad).is_err(), "{bad}");
        }
    }

    fn outputs(pairs: &[(&str, &str)]) -> Vec<u8> {
        let outs: Vec<Value> = pairs
            .iter()
            .map(|(k, v)| serde_json::json!({"OutputKey": k, "OutputValue": v}))
            .collect();
        serde_json::to_vec(
            &serde_json::json!({"Stacks": [{"StackStatus": "CREATE_COMPLETE", "Outputs": outs}]}),
        )
        .unwrap()
    }

    #[test]
    fn stack_outputs_map_to_targets() {
        let all: Vec<(&str, String)> = STACK_OUTPUTS
            .iter()
            .map(|k| {
                (
                    *k,
                    format!("https://x.execute-api.us-east-1.amazonaws.com/{k}"),
                )
            })
            .collect();
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let t = parse_stack_outputs("s", &outputs(&pairs)).unwrap();
        assert!(t.voice_fallback.ends_with("/VoiceFallbackUrl"));
        assert!(t.status.ends_with("/StatusCallbackUrl"));

        let err = parse_stack_outputs("s", &outputs(&pairs[..3])).unwrap_err();
        assert!(err.contains("VoiceFallbackUrl, StatusCallbackUrl"), "{err}");
        let mut bad = pairs.clone();
        bad[0].1 = "not a url";
        let err = parse_stack_outputs("s", &outputs(&bad)).unwrap_err();
        assert!(err.contains("output SmsWebhookUrl"), "{err}");
        assert!(
            parse_stack_outputs("s", b"{}")
                .unwrap_err()
                .contains("no stack named s")
        );
        assert!(
            parse_stack_outputs("s", b"<html>")
                .unwrap_err()
                .contains("invalid JSON")
        );
    }

    #[test]
    fn samconfig_stack_name_deploy_then_global() {
        let dir = std::env::temp_dir().join(format!("samconfig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("samconfig.toml");
        assert_eq!(samconfig_stack(&file).unwrap(), None, "no file");
        std::fs::write(
            &file,
            "version = 0.1\n[default.global.parameters]\nstack_name = \"g\"\n",
        )
        .unwrap();
        assert_eq!(samconfig_stack(&file).unwrap().as_deref(), Some("g"));
        std::fs::write(
            &file,
            "version = 0.1\n[default.global.parameters]\nstack_name = \"g\"\n[default.deploy.parameters]\nstack_name = \"d\"\n",
        )
        .unwrap();
        assert_eq!(samconfig_stack(&file).unwrap().as_deref(), Some("d"));
        std::fs::write(&file, "version = 0.1\n[default.build.parameters]\n").unwrap();
        assert_eq!(samconfig_stack(&file).unwrap(), None);
        std::fs::write(&file, "stack_name = \n").unwrap();
        assert!(
            samconfig_stack(&file)
                .unwrap_err()
                .contains("not valid TOML")
        );
        // The repository's own samconfig.toml names the stack.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samconfig.toml");
        assert_eq!(
            samconfig_stack(&repo).unwrap().as_deref(),
            Some("twilio-webhooks")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
