//! The web UI as the server serves it: public static files (even with API keys), long caching
//! for hashed assets, revalidation for the page, and 304s on a matching ETag.

mod common;

use common::server::start;

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_the_right_caching() {
    let s = start(&["--api-key", "sekret"]);
    let client = reqwest::Client::new();
    let page = client.get(format!("{}/", s.base)).send().await.unwrap();
    if !lantern::server::ui::built() {
        // Built without `make ui`: the page says how to get the UI.
        assert_eq!(page.status(), 503);
        assert!(page.text().await.unwrap().contains("make ui"));
        return;
    }
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(h["cache-control"], "no-cache");
    let etag = h["etag"].to_str().unwrap().to_string();
    let html = page.text().await.unwrap();
    let asset = html
        .split('"')
        .find(|p| p.starts_with("/assets/") && p.ends_with(".js"))
        .expect("the page links its script");

    let js = client
        .get(format!("{}{asset}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(
        js.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    let again = client
        .get(format!("{}/", s.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // The API behind it still wants the key; a missing asset is a 404 in OpenAI's shape.
    let api = client
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let missing = client
        .get(format!("{}/assets/nope.js", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
