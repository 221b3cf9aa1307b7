//! `betaas-agent forecast`: Holt's linear method over a series read from a file.

use std::path::PathBuf;
use std::process::ExitCode;

use betaas_core::forecast::{fit, forecast};
use clap::Args;

/// Shown by `forecast --help`.
pub const METHOD: &str = "\
Holt's linear method (double exponential smoothing, NIST/SEMATECH e-Handbook 6.4.3.3).
Initialisation: level = first value, trend = second value minus first value.
Update per value y: level' = alpha*y + (1-alpha)*(level + trend);
                    trend' = beta*(level' - level) + (1-beta)*trend.
Prints the forecasts level + h*trend for h = 1..=HORIZON, one per line.";

#[derive(Args, Debug)]
#[command(after_help = METHOD)]
pub struct ForecastArgs {
    /// Level smoothing α, 0..=1.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Trend smoothing β, 0..=1.
    #[arg(long, default_value_t = 0.3)]
    pub beta: f64,
    /// Number of steps to forecast.
    #[arg(long, default_value_t = 1)]
    pub horizon: u32,
    /// Fit α and β by minimising the one-step squared error over the series (ignores --alpha and
    /// --beta) and print `alpha=A beta=B` before the forecasts.
    #[arg(long)]
    pub fit: bool,
    /// One number per line (`-` for stdin). An empty line, `nan` or `-` is a missing sample (a
    /// gap that keeps its place in time); lines starting with `#` are comments.
    pub file: PathBuf,
}

/// Parses the series; errors name the file and line.
pub fn parse_series(name: &str, text: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('#') {
            continue;
        }
        if l.is_empty() || l == "-" || l.eq_ignore_ascii_case("nan") {
            out.push(f64::NAN);
            continue;
        }
        match l.parse::<f64>() {
            Ok(v) if v.is_finite() => out.push(v),
            _ => return Err(format!("{name}:{}: {l:?} is not a number", i + 1)),
        }
    }
    Ok(out)
}

pub fn run(args: &ForecastArgs) -> ExitCode {
    match forecast_text(args) {
        Ok(text) => super::print(&text),
        Err(e) => {
            eprintln!("betaas-agent forecast: {e}");
            ExitCode::from(2)
        }
    }
}

fn forecast_text(args: &ForecastArgs) -> Result<String, String> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        ("stdin".to_owned(), s)
    } else {
        let name = args.file.display().to_string();
        let text = std::fs::read_to_string(&args.file).map_err(|e| format!("{name}: {e}"))?;
        (name, text)
    };
    let series = parse_series(&name, &text)?;
    if !series.iter().any(|v| v.is_finite()) {
        return Err(format!("{name}: no values to forecast from"));
    }
    let mut out = String::new();
    let (alpha, beta) = if args.fit {
        let f = fit(&series).map_err(|e| format!("{name}: {e}"))?;
        out.push_str(&format!(
            "alpha={} beta={}\n",
            number(f.alpha),
            number(f.beta)
        ));
        (f.alpha, f.beta)
    } else {
        (args.alpha, args.beta)
    };
    for v in forecast(&series, alpha, beta, args.horizon).map_err(|e| e.to_string())? {
        out.push_str(&number(v));
        out.push('\n');
    }
    Ok(out)
}

/// Nine decimals at most, trailing zeros dropped: `22.57`, not `22.569999999999997`; `33`, not `33.0`.
fn number(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn args(file: PathBuf, horizon: u32, fit: bool) -> ForecastArgs {
        ForecastArgs {
            alpha: 0.5,
            beta: 0.4,
            horizon,
            fit,
            file,
        }
    }

    #[test]
    fn file_to_forecasts() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.txt");
        std::fs::write(&p, "# memory\n10\n12\n13\n17\n").unwrap();
        // Hand-computed in betaas_core::forecast's tests: 18.29, 20.43.
        let out = forecast_text(&args(p.clone(), 2, false)).unwrap();
        let v: Vec<f64> = out.lines().map(|l| l.parse().unwrap()).collect();
        assert!(
            (v[0] - 18.29).abs() < 1e-9 && (v[1] - 20.43).abs() < 1e-9,
            "{out}"
        );
        let slope = 3 + std::process::id() % 5;
        let lin: String = (0..10).map(|t| format!("{}\n", t * slope)).collect();
        std::fs::write(&p, lin).unwrap();
        let out = forecast_text(&args(p, 1, true)).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("alpha="), "{out}");
        assert_eq!(lines[1], (10 * slope).to_string());
    }

    #[test]
    fn bad_input_names_the_line() {
        assert_eq!(
            parse_series("f", "1\n\n2\nabc\n").unwrap_err(),
            "f:4: \"abc\" is not a number"
        );
        let s = parse_series("f", "1\nnan\n-\n4\n").unwrap();
        assert_eq!(s.iter().filter(|v| v.is_nan()).count(), 2);
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("empty");
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(forecast_text(&args(p, 1, false))
            .unwrap_err()
            .contains("no values"));
        let p = t.path().join("two");
        std::fs::write(&p, "1\n2\n").unwrap();
        let e = forecast_text(&ForecastArgs {
            alpha: 2.0,
            ..args(p, 1, false)
        })
        .unwrap_err();
        assert!(e.contains("alpha = 2 is out of range 0..=1"), "{e}");
    }
}
