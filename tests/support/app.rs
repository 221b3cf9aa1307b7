//! The `app` template's tests (app_war on the host, gateway_cloud on the emulated gateway): a WAR
//! built here whose one servlet answers a random token at /, and a plain HTTP GET to read it back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `ROOT.war` in `dir`: one servlet at / printing `token`, compiled against the servlet API jar of
/// the template's own rootfs (`rootfs.tar.gz` of an app template: the Tomcat it will run in).
pub fn build_war(dir: &Path, token: &str, rootfs: &Path) -> PathBuf {
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(rootfs)
        .arg("-C")
        .arg(dir)
        .args(["--wildcards", "./usr/share/java/tomcat10-servlet-api-*.jar"])
        .status()
        .expect("tar");
    assert!(st.success(), "the servlet API jar in {}", rootfs.display());
    let api = std::fs::read_dir(dir.join("usr/share/java"))
        .expect("jar dir")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("servlet API jar");
    let src = dir.join("src/betaas");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(
        src.join("Token.java"),
        format!(
            "package betaas;\n\
             @jakarta.servlet.annotation.WebServlet(\"/\")\n\
             public class Token extends jakarta.servlet.http.HttpServlet {{\n\
               @Override protected void doGet(jakarta.servlet.http.HttpServletRequest q,\n\
                   jakarta.servlet.http.HttpServletResponse r) throws java.io.IOException {{\n\
                 r.setContentType(\"text/plain\"); r.getWriter().print(\"{token}\");\n\
               }}\n\
             }}\n"
        ),
    )
    .expect("Token.java");
    let classes = dir.join("war/WEB-INF/classes");
    let st = Command::new("javac")
        .args(["--release", "17", "-cp"])
        .arg(&api)
        .arg("-d")
        .arg(&classes)
        .arg(src.join("Token.java"))
        .status()
        .expect("javac (openjdk-17-jdk-headless: image/host-deps.sh)");
    assert!(st.success(), "javac");
    let war = dir.join("ROOT.war");
    let st = Command::new("jar")
        .arg("cf")
        .arg(&war)
        .arg("-C")
        .arg(dir.join("war"))
        .arg(".")
        .status()
        .expect("jar");
    assert!(st.success(), "jar");
    war
}

/// The body of `GET url` (http://host:port/…), or `None` when nothing answers.
pub fn get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}
