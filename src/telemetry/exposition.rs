//! The exporter's Prometheus text, cut into families: to serve one stats node's share of it
//! unchanged, and to turn it into the On-Premises JSON shape
//! `{name: {"type", "help", "data": [{"labels": {…}, "value": N}]}}`.
//!
//! Only text rendered by metrics-exporter-prometheus comes here, but the parser still accepts
//! any line without panicking: a line it cannot read is skipped.

use serde_json::{Map, Number, Value, json};

/// One `# HELP` / `# TYPE` block and its sample lines, as rendered.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    /// The block's lines, verbatim (comments included), each ending in `\n`.
    pub text: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name: the family's, or with `_bucket`, `_sum`, `_count` for histograms.
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Cuts exposition text into families, in their order.
pub fn parse(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let detail = words.next().unwrap_or("").to_owned();
            let family = family_named(&mut families, name);
            match keyword {
                "HELP" => family.help = detail,
                "TYPE" => family.kind = detail,
                _ => {}
            }
            family.text.push_str(line);
            family.text.push('\n');
        } else if let Some(sample) = parse_sample(line) {
            let family = match families.last_mut() {
                Some(f) if sample.name.starts_with(&f.name) => f,
                _ => family_named(&mut families, &sample.name.clone()),
            };
            family.text.push_str(line);
            family.text.push('\n');
            family.samples.push(sample);
        }
    }
    families
}

fn family_named<'a>(families: &'a mut Vec<Family>, name: &str) -> &'a mut Family {
    let at = match families.iter().position(|f| f.name == name) {
        Some(at) => at,
        None => {
            families.push(Family {
                name: name.to_owned(),
                kind: "untyped".into(),
                ..Family::default()
            });
            families.len() - 1
        }
    };
    &mut families[at]
}

/// `name{label="value",…} value [timestamp]`
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// Reads `k="v",…}` and returns the pairs and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = &after_key[end + 1..];
    }
}

/// Series the On-Premises API names in milliseconds. Prometheus text must use base units
/// (promtool refuses `_ms`), so the exporter has them in seconds and the JSON shows both.
const MILLISECOND_ALIASES: [(&str, &str); 2] = [
    (
        "callback_requests_duration_seconds_count",
        "callback_requests_duration_ms_count",
    ),
    (
        "callback_requests_duration_seconds_sum",
        "callback_requests_duration_ms_sum",
    ),
];

/// The families as On-Premises stats JSON, keyed by sample name (so a histogram shows as
/// `<name>_bucket`, `<name>_sum` and `<name>_count`, the way the On-Premises API names them).
pub fn to_json(families: &[Family]) -> Value {
    let mut out = Map::new();
    for family in families {
        for sample in &family.samples {
            if let Some((_, alias)) = MILLISECOND_ALIASES.iter().find(|(name, _)| *name == sample.name) {
                let value = if alias.ends_with("_sum") {
                    sample.value * 1000.0
                } else {
                    sample.value
                };
                push(&mut out, alias, family, &sample.labels, value);
            }
            push(&mut out, &sample.name, family, &sample.labels, sample.value);
        }
    }
    Value::Object(out)
}

fn push(out: &mut Map<String, Value>, name: &str, family: &Family, labels: &[(String, String)], value: f64) {
    let entry = out
        .entry(name.to_owned())
        .or_insert_with(|| json!({ "type": family.kind, "help": family.help, "data": [] }));
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if let Some(data) = entry.get_mut("data").and_then(Value::as_array_mut) {
        data.push(json!({ "labels": labels, "value": number(value) }));
    }
}

/// Whole values (counts, sizes) as JSON integers; others as floats; NaN and infinities as
/// the strings Prometheus uses for them.
fn number(v: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is an exact f64
    if v.fract() == 0.0 && v.abs() < EXACT {
        return Value::from(v as i64);
    }
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("NaN".into()),
        None if v > 0.0 => Value::String("+Inf".into()),
        None => Value::String("-Inf".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pending_callbacks Callbacks pending.\n# TYPE pending_callbacks gauge\npending_callbacks 3\n\n\
# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\nlat_seconds_bucket{route=\"/v1/users/{name}\",le=\"0.5\"} 1\n\
lat_seconds_bucket{route=\"/v1/users/{name}\",le=\"+Inf\"} 2\nlat_seconds_sum{route=\"/v1/users/{name}\"} 0.75\n\
lat_seconds_count{route=\"/v1/users/{name}\"} 2\n";

    #[test]
    fn families_keep_their_lines_verbatim() {
        let families = parse(TEXT);
        assert_eq!(families.len(), 2);
        assert_eq!(
            families[0].text,
            "# HELP pending_callbacks Callbacks pending.\n# TYPE pending_callbacks gauge\npending_callbacks 3\n"
        );
        assert_eq!(families[1].kind, "histogram");
        assert_eq!(families[1].samples.len(), 4);
    }

    #[test]
    fn labels_with_braces_and_escapes_are_read() {
        let s = parse_sample(r#"x{a="q\"{}\\",b="2"} 7"#).expect("sample");
        assert_eq!(s.labels, vec![("a".into(), "q\"{}\\".into()), ("b".into(), "2".into())]);
        assert_eq!(s.value, 7.0);
    }

    #[test]
    fn json_is_keyed_by_sample_name_with_type_help_and_data() {
        let json = to_json(&parse(TEXT));
        assert_eq!(json["pending_callbacks"]["type"], "gauge");
        assert_eq!(json["pending_callbacks"]["data"][0]["value"], 3);
        assert_eq!(json["lat_seconds_sum"]["data"][0]["value"], 0.75);
        assert_eq!(
            json["lat_seconds_count"]["data"][0]["labels"]["route"],
            "/v1/users/{name}"
        );
        assert_eq!(json["lat_seconds_bucket"]["data"][1]["labels"]["le"], "+Inf");
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        assert!(
            parse("garbage\n{\n x{a=\"unterminated 1\n")
                .iter()
                .all(|f| f.samples.is_empty())
        );
    }
}
