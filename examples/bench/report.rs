//! Medians over runs, the table and the JSON object.

use crate::Opts;
use crate::measure::Figures;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub fn medians(runs: &[Figures]) -> Figures {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, median(runs.iter().map(|r| r[i].1).collect())))
        .collect()
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// The ratios shown: (numerator, denominator) by label (a system's name, or `scraped`:
/// the relay with scrapes), where both ran.
const RATIOS: [(&str, &str); 5] = [
    ("relay", "baseline"),
    ("group", "mbaseline"),
    ("group", "relay"),
    ("mbaseline", "baseline"),
    ("scraped", "relay"),
];

fn ratio_name(a: &str, b: &str) -> String {
    let short = |s: &str| match s {
        "baseline" => "base".to_string(),
        "mbaseline" => "mbase".to_string(),
        other => other.to_string(),
    };
    format!("{}/{}", short(a), short(b))
}

/// `med`: medians per label, in the order measured.
pub fn print(o: &Opts, med: &[(&'static str, Figures)]) {
    let get = |label: &str, k: &str| {
        med.iter()
            .find(|(l, _)| *l == label)
            .and_then(|(_, f)| f.iter().find(|(n, _)| *n == k).map(|x| x.1))
    };
    let ratio = |a: &str, b: &str, k: &str| match (get(a, k), get(b, k)) {
        (Some(x), Some(y)) if y != 0.0 => Some(x / y),
        _ => None,
    };
    let present = |s: &str| med.iter().any(|(m, _)| *m == s);
    let ratios: Vec<(&str, &str)> = RATIOS
        .iter()
        .copied()
        .filter(|&(a, b)| present(a) && present(b))
        .collect();
    // The two-column table (and the JSON's "ratio"): baseline vs relay, or relay vs scraped.
    let (first, second) = if o.scrape_ms.is_some() {
        ("relay", "scraped")
    } else {
        ("baseline", "relay")
    };
    // Every figure of every system, in first-seen order.
    let mut keys: Vec<&'static str> = Vec::new();
    for (_, f) in med {
        for (k, _) in f {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    let mode = if o.leave_rekey.is_some() {
        "leave-rekey".to_string()
    } else if o.rss.is_some() {
        "rss".to_string()
    } else if let Some(ms) = o.scrape_ms {
        format!("rate {} scrape {ms} ms", o.rate)
    } else if o.max {
        "max".to_string()
    } else {
        format!("rate {}", o.rate)
    };
    if o.json {
        let mut s = format!(
            "{{\"clients\":{},\"senders\":{},\"size\":{},\"mode\":\"{mode}\",\"runs\":{},\"server\":\"{}\"",
            o.clients,
            o.senders,
            o.size,
            o.runs,
            if o.server.is_some() || o.rss.is_some() {
                "child"
            } else {
                "thread"
            }
        );
        for (label, f) in med {
            s += &format!(",\"{label}\":{{");
            let body: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", num(*v)))
                .collect();
            s += &body.join(",");
            s += "}";
        }
        let obj = |a: &str, b: &str| {
            let body: Vec<String> = keys
                .iter()
                .map(|k| format!("\"{k}\":{}", num(ratio(a, b, k).unwrap_or(f64::NAN))))
                .collect();
            format!("{{{}}}", body.join(","))
        };
        // "ratio" is relay/baseline (scraped/relay), as before group mode.
        s += &format!(",\"ratio\":{}", obj(second, first));
        s += ",\"ratios\":{";
        let body: Vec<String> = ratios
            .iter()
            .map(|&(a, b)| format!("\"{}\":{}", ratio_name(a, b), obj(a, b)))
            .collect();
        s += &body.join(",");
        s += "}}";
        println!("{s}");
        return;
    }
    println!(
        "clients {} senders {} size {} {} (medians of {} run(s){})",
        o.clients,
        o.senders,
        o.size,
        if o.leave_rekey.is_some() {
            "leave-rekey mode".to_string()
        } else if o.rss.is_some() {
            format!("rss mode, rate {} msg/s", o.rate)
        } else if let Some(ms) = o.scrape_ms {
            format!("rate {} msg/s, GET /metrics every {ms} ms", o.rate)
        } else if o.max {
            "max search".to_string()
        } else {
            format!("rate {} msg/s", o.rate)
        },
        o.runs,
        if o.server.is_some() {
            ", servers as child processes"
        } else {
            ""
        }
    );
    let systems: Vec<&str> = med.iter().map(|(s, _)| *s).collect();
    if systems == [first, second] {
        // The table as it was before group mode.
        println!(
            "{:<32} {:>14} {:>14} {:>10}",
            "figure",
            first,
            second,
            ratio_name(second, first)
        );
        for k in &keys {
            let b = get(first, k);
            let r = get(second, k);
            println!(
                "{:<32} {:>14} {:>14} {:>10}",
                k,
                b.map(fmt).unwrap_or("-".into()),
                r.map(fmt).unwrap_or("-".into()),
                ratio(second, first, k).map(fmt).unwrap_or("-".into())
            );
        }
        return;
    }
    let mut head = format!("{:<36}", "figure");
    for s in &systems {
        head += &format!(" {s:>12}");
    }
    for &(a, b) in &ratios {
        head += &format!(" {:>11}", ratio_name(a, b));
    }
    println!("{head}");
    for k in &keys {
        let mut line = format!("{k:<36}");
        for &s in &systems {
            line += &format!(" {:>12}", get(s, k).map(fmt).unwrap_or("-".into()));
        }
        for &(a, b) in &ratios {
            line += &format!(" {:>11}", ratio(a, b, k).map(fmt).unwrap_or("-".into()));
        }
        println!("{line}");
    }
}
