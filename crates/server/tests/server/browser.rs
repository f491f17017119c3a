//! A VMI's display in a real browser: `virtctl vnc --web` serves its page, headless
//! Chromium (driven through chromedriver's WebDriver API) loads it, and the page's RFB
//! client shows the guest's screen at the size the display has.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    BIN, Scratch, System, Tls, free_port, https_client, kubectl, kubectl_ok, upstream_example,
    virtctl, wait_until,
};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session through chromedriver.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Killed,
}

impl Browser {
    /// Chromium keeps its profile under `TMPDIR`: pointing that into the scratch directory
    /// leaves nothing behind in /tmp when the browser is killed rather than quit.
    async fn start(http: reqwest::Client, tmp: &Path) -> Self {
        let port = free_port();
        std::fs::create_dir_all(tmp).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: scripts/install-deps.sh installs chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not answer");
        let session = post(&http, &format!("{base}/session"), json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}}}})).await;
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"))
            .to_owned();
        Self {
            http,
            base: format!("{base}/session/{id}"),
            _driver: Killed(driver),
        }
    }

    async fn open(&self, url: &str) {
        let r = post(
            &self.http,
            &format!("{}/url", self.base),
            json!({"url": url}),
        )
        .await;
        assert!(r["value"].is_null(), "opening {url}: {r}");
    }

    /// Ends the session, which closes the browser.
    async fn close(self) {
        let _ = self.http.delete(&self.base).send().await;
    }

    async fn script(&self, script: &str) -> Value {
        let url = format!("{}/execute/sync", self.base);
        let r = post(&self.http, &url, json!({"script": script, "args": []})).await;
        r["value"].clone()
    }
}

/// A WebDriver command: `body` POSTed to `url`, the JSON answer.
async fn post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vmi_display_shows_in_a_browser_without_a_viewer() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();
    kubectl_ok(
        &kc,
        &scratch,
        &["apply", "-f", &upstream_example("vmi-ephemeral.yaml")],
    );
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "wait",
            "vmi/vmi-ephemeral",
            "--for=condition=Ready",
            "--timeout=90s",
        ],
    );

    // The display's size, as the server's screenshot has it.
    let png_path = scratch.path("screen.png");
    let screen_size = || {
        let out = virtctl(
            &kc,
            &[
                "vnc",
                "screenshot",
                "vmi-ephemeral",
                "--file",
                png_path.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&png_path).unwrap();
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        (u64::from(size(16)), u64::from(size(20)))
    };

    let none = virtctl(&kc, &["vnc", "nosuch", "--web"]);
    assert_eq!(none.status.code(), Some(1));
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.contains("nosuch") && said.lines().count() == 1,
        "{said}"
    );

    let mut web = Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["vnc", "vmi-ephemeral", "--web"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(web.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _web = Killed(web);
    let announced: Value = serde_json::from_str(&first).unwrap();
    let url = announced["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    // Plain HTTP; the client is the tests' one, which brings its TLS provider.
    let http = https_client(&server.ca_pem(), Tls::default());
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<canvas"));
    let missing = http.get(format!("{url}nosuch")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Another web page cannot drive the VM: without the URL's secret path there is
    // nothing, and a websocket from a foreign origin is refused even with it.
    let port = announced["port"].as_u64().unwrap();
    for guess in ["/", "/vnc.html", "/websockify"] {
        let r = http
            .get(format!("http://127.0.0.1:{port}{guess}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{guess}");
    }
    let foreign = http
        .get(format!("{url}websockify"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    let browser = Browser::start(http, &scratch.path("browser-tmp")).await;
    browser.open(&url).await;
    let shown = wait_until(
        "the display in the browser",
        Duration::from_secs(60),
        server,
        || {
            let browser = &browser;
            async move {
                let v = browser.script("return window.vnc").await;
                (v["state"] == "connected" && v["updates"].as_u64().is_some_and(|n| n >= 1))
                    .then_some(v)
            }
        },
    )
    .await;
    // The guest may switch modes while it boots (the firmware's 640x480, the kernel's
    // 720x400 text): the page follows, and settles on the size the server's screenshot has.
    let (width, height) = wait_until(
        "the page at the display's size",
        Duration::from_secs(30),
        server,
        || {
            let browser = &browser;
            let screen = screen_size();
            async move {
                let v = browser.script("return window.vnc").await;
                (v["width"].as_u64() == Some(screen.0) && v["height"].as_u64() == Some(screen.1))
                    .then_some(screen)
            }
        },
    )
    .await;
    let title = browser.script("return document.title").await;
    assert_eq!(
        title.as_str(),
        Some(format!("VNC: {}: {width}x{height}", shown["name"].as_str().unwrap()).as_str())
    );
    // What the page drew is the guest's screen: some of it is lit (the firmware's and
    // the kernel's text), and it keeps updating while the page is open.
    let lit = browser
        .script(
            "const c = document.getElementById('screen');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let lit = 0;
             for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) lit++;
             return lit;",
        )
        .await;
    assert!(lit.as_u64().is_some_and(|n| n > 0), "a black canvas: {lit}");
    let before = shown["updates"].as_u64().unwrap();
    wait_until("more updates", Duration::from_secs(20), server, || {
        let browser = &browser;
        async move {
            let n = browser.script("return window.vnc.updates").await.as_u64()?;
            (n > before).then_some(())
        }
    })
    .await;
    browser.close().await;
    drop(kubectl(
        &kc,
        &scratch,
        &[
            "delete",
            "vmi",
            "vmi-ephemeral",
            "--wait=true",
            "--timeout=30s",
        ],
    ));
}
