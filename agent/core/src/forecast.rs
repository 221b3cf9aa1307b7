//! Holt's linear method (double exponential smoothing), NIST/SEMATECH e-Handbook §6.4.3.3.
//!
//! ```text
//! level_t = α·y_t + (1−α)·(level_{t−1} + trend_{t−1})
//! trend_t = β·(level_t − level_{t−1}) + (1−β)·trend_{t−1}
//! forecast_{t+h} = level_t + h·trend_t
//! ```
//! Initialisation: level = first value, trend = second value minus first value. With that start the
//! second update gives level = y₂ exactly, so a linear series is forecast exactly.
//!
//! Missing samples (NaN or infinite, e.g. a sampler that failed) are gaps: the state advances one
//! step along the trend without an observation, so later samples keep their place in time.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ForecastError {
    #[error("{name} = {value} is out of range 0..=1")]
    Parameter { name: &'static str, value: f64 },
    #[error("fitting needs at least 3 finite values, got {0}")]
    TooShortToFit(usize),
}

/// The running Holt state: O(1) per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    state: State,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Empty,
    /// One finite value seen; `gap` steps have passed since it (the trend needs a second value).
    One {
        level: f64,
        gap: u32,
    },
    Running {
        level: f64,
        trend: f64,
    },
}

fn check(name: &'static str, value: f64) -> Result<f64, ForecastError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ForecastError::Parameter { name, value })
    }
}

impl Holt {
    pub fn new(alpha: f64, beta: f64) -> Result<Holt, ForecastError> {
        Ok(Holt {
            alpha: check("alpha", alpha)?,
            beta: check("beta", beta)?,
            state: State::Empty,
        })
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Current (level, trend); `None` before the first finite value. With one value the trend is 0.
    pub fn state(&self) -> Option<(f64, f64)> {
        match self.state {
            State::Empty => None,
            State::One { level, .. } => Some((level, 0.0)),
            State::Running { level, trend } => Some((level, trend)),
        }
    }

    /// Feeds one sample; a non-finite value is a gap.
    pub fn update(&mut self, y: f64) {
        let (a, b) = (self.alpha, self.beta);
        self.state = match (&self.state, y.is_finite()) {
            (State::Empty, false) => State::Empty,
            (State::Empty, true) => State::One { level: y, gap: 0 },
            (&State::One { level, gap }, false) => State::One {
                level,
                gap: gap + 1,
            },
            // Second finite value: trend = slope between the two, level = the newest value.
            (&State::One { level, gap }, true) => State::Running {
                level: y,
                trend: (y - level) / f64::from(gap + 1),
            },
            (&State::Running { level, trend }, false) => State::Running {
                level: level + trend,
                trend,
            },
            // The error-correction form of the same equations: when the forecast was right the
            // correction is exactly zero, so a linear series stays exact in floating point too.
            (&State::Running { level, trend }, true) => {
                let predicted = level + trend;
                let new_level = predicted + a * (y - predicted);
                State::Running {
                    level: new_level,
                    trend: trend + b * (new_level - level - trend),
                }
            }
        };
    }

    /// The forecast `h` steps after the last sample (h = 0 is the smoothed level). `None` before data.
    pub fn forecast(&self, h: u32) -> Option<f64> {
        match self.state {
            State::Empty => None,
            // One value (possibly followed by gaps): no trend can be known, the forecast is flat.
            State::One { level, .. } => Some(level),
            State::Running { level, trend } => Some(level + f64::from(h) * trend),
        }
    }
}

/// The forecasts 1..=horizon steps after the end of `series`; empty if the series has no finite value.
pub fn forecast(
    series: &[f64],
    alpha: f64,
    beta: f64,
    horizon: u32,
) -> Result<Vec<f64>, ForecastError> {
    let mut holt = Holt::new(alpha, beta)?;
    for &y in series {
        holt.update(y);
    }
    Ok((1..=horizon).filter_map(|h| holt.forecast(h)).collect())
}

/// Sum of squared one-step-ahead errors, over the samples after the two that initialise the state
/// (their errors are zero by construction and would only flatter every α, β alike).
pub fn one_step_sse(series: &[f64], alpha: f64, beta: f64) -> Result<f64, ForecastError> {
    let mut holt = Holt::new(alpha, beta)?;
    let mut sse = 0.0;
    for &y in series {
        if y.is_finite() {
            if let (State::Running { .. }, Some(f)) = (&holt.state, holt.forecast(1)) {
                sse += (y - f) * (y - f);
            }
        }
        holt.update(y);
    }
    Ok(sse)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub alpha: f64,
    pub beta: f64,
    pub sse: f64,
}

/// α and β minimising the one-step squared error: a 0.05 grid over [0, 1]², then a 0.005 grid
/// around the best point. A grid rather than a gradient method: the SSE surface has flat regions
/// and several minima, and a grid is deterministic and cheap (≈ 1 000 passes over the history).
/// Ties go to the smaller α, then the smaller β (the smoother model).
pub fn fit(series: &[f64]) -> Result<Fit, ForecastError> {
    let finite = series.iter().filter(|y| y.is_finite()).count();
    if finite < 3 {
        return Err(ForecastError::TooShortToFit(finite));
    }
    let mut best = Fit {
        alpha: 0.0,
        beta: 0.0,
        sse: f64::INFINITY,
    };
    let try_grid = |a0: f64, b0: f64, step: f64, n: i32, best: &mut Fit| {
        for i in -n..=n {
            for j in -n..=n {
                let a = round6(a0 + f64::from(i) * step);
                let b = round6(b0 + f64::from(j) * step);
                if let Ok(sse) = one_step_sse(series, a, b) {
                    let better =
                        sse < best.sse || (sse == best.sse && (a, b) < (best.alpha, best.beta));
                    if better {
                        *best = Fit {
                            alpha: a,
                            beta: b,
                            sse,
                        };
                    }
                }
            }
        }
    };
    try_grid(0.5, 0.5, 0.05, 10, &mut best);
    let (a, b) = (best.alpha, best.beta);
    try_grid(a, b, 0.005, 10, &mut best);
    Ok(best)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_values() {
        // y = 10, 12, 13, 17; α = 0.5, β = 0.4.
        // init: level 10, trend 2 → after y2: level 12, trend 2.
        // y3 = 13: level = .5·13 + .5·(12+2) = 13.5; trend = .4·1.5 + .6·2 = 1.8
        // y4 = 17: level = .5·17 + .5·(13.5+1.8) = 16.15; trend = .4·2.65 + .6·1.8 = 2.14
        let f = forecast(&[10.0, 12.0, 13.0, 17.0], 0.5, 0.4, 3).unwrap();
        assert!(close(f[0], 18.29), "{f:?}");
        assert!(close(f[1], 20.43), "{f:?}");
        assert!(close(f[2], 22.57), "{f:?}");
    }

    #[test]
    fn linear_series_is_forecast_exactly() {
        for (a, b) in [(0.1, 0.9), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0)] {
            let series: Vec<f64> = (0..50).map(|t| 7.0 + 3.0 * f64::from(t)).collect();
            let f = forecast(&series, a, b, 5).unwrap();
            let expect: Vec<f64> = (50..55).map(|t| 7.0 + 3.0 * f64::from(t)).collect();
            assert_eq!(f, expect, "alpha {a} beta {b}");
        }
    }

    #[test]
    fn constant_series_stays_constant() {
        let f = forecast(&[4.5; 20], 0.3, 0.2, 4).unwrap();
        assert_eq!(f, vec![4.5; 4]);
        assert_eq!(one_step_sse(&[4.5; 20], 0.3, 0.2).unwrap(), 0.0);
    }

    #[test]
    fn short_series() {
        assert_eq!(forecast(&[], 0.5, 0.5, 3).unwrap(), Vec::<f64>::new());
        assert_eq!(
            forecast(&[f64::NAN], 0.5, 0.5, 3).unwrap(),
            Vec::<f64>::new()
        );
        assert_eq!(forecast(&[3.0], 0.5, 0.5, 2).unwrap(), vec![3.0, 3.0]);
        assert_eq!(forecast(&[3.0, 5.0], 0.5, 0.5, 2).unwrap(), vec![7.0, 9.0]);
    }

    #[test]
    fn gaps_keep_time_aligned() {
        // 0, 2, gap, 6, gap → linear with slope 2; forecast 1 step after the final gap is 10.
        let nan = f64::NAN;
        let f = forecast(&[0.0, 2.0, nan, 6.0, nan], 0.5, 0.5, 1).unwrap();
        assert_eq!(f, vec![10.0]);
        // A gap between the two initialising values: slope over two steps.
        let f = forecast(&[nan, 1.0, f64::INFINITY, 5.0], 0.5, 0.5, 1).unwrap();
        assert_eq!(f, vec![7.0]);
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            Holt::new(1.5, 0.1).unwrap_err(),
            ForecastError::Parameter {
                name: "alpha",
                value: 1.5
            }
        );
        assert!(Holt::new(0.1, -0.1).is_err());
        assert!(Holt::new(f64::NAN, 0.1).is_err());
    }

    #[test]
    fn fit_finds_the_generating_parameters_region() {
        // Linear series: any α with β fit exactly; the tie goes to the smallest α, β.
        let lin: Vec<f64> = (0..30).map(|t| f64::from(t) * 2.0).collect();
        let f = fit(&lin).unwrap();
        assert_eq!(f.sse, 0.0);
        assert_eq!((f.alpha, f.beta), (0.0, 0.0));
        // A random walk with drift is best followed by a high α.
        let mut y = 0.0;
        let mut s = 12345u64;
        let walk: Vec<f64> = (0..200)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                y += ((s >> 33) as f64 / f64::from(1u32 << 31)) - 0.5 + 0.1;
                y
            })
            .collect();
        let f = fit(&walk).unwrap();
        assert!(f.alpha > 0.7, "{f:?}");
        let sse_default = one_step_sse(&walk, 0.5, 0.3).unwrap();
        assert!(f.sse <= sse_default, "{f:?} vs {sse_default}");
        assert_eq!(
            fit(&[1.0, f64::NAN, 2.0]),
            Err(ForecastError::TooShortToFit(2))
        );
    }
}
