//! The admin listener: `/metrics` (one scrape, or polled until a sample moves — metrics are
//! updated off the request path) and `POST /reload`; reading samples out of the exposition.

use std::time::{Duration, Instant};

use super::{Conn, Gateway, Resp, TIMEOUT};

impl Gateway {
    /// Plain HTTP/1.1 connection to the admin listener.
    pub async fn admin_conn(&self) -> Conn {
        Conn::plain(self.admin(), "127.0.0.1").await
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics_text(&self) -> String {
        let r = self.admin_conn().await.get("/metrics", &[]).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// `POST /reload` on the admin listener.
    pub async fn admin_reload(&self) -> Resp {
        self.admin_conn()
            .await
            .request(http::Method::POST, "/reload", &[], "")
            .await
    }

    /// Scrape `/metrics` until `f` returns something, up to [`TIMEOUT`]; panics naming `what`
    /// with the last exposition.
    pub async fn poll_metrics<T>(&self, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.metrics_text().await;
            if let Some(v) = f(&text) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen in /metrics within {TIMEOUT:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Scrape until the value of `series` (see [`metric`]) satisfies `pred`; that value.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        self.poll_metrics(&format!("{series} reaching the expected value"), |text| {
            Some(metric(text, series)).filter(|v| pred(*v))
        })
        .await
    }
}

/// Value of one exposition line `series value` (series = name plus its `{labels}` exactly as
/// exposed; surrounding spaces ignored); None when the series is absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let series = series.trim();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .map(|(_, v)| {
            v.parse()
                .unwrap_or_else(|_| panic!("{series}: value {v:?} is not a number"))
        })
}

/// [`sample`], 0 when the series is absent (a counter not yet incremented).
pub fn metric(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}
