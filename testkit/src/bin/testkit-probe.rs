//! A stand-in test process for the harness's own tests: it starts one region's engines through
//! testkit, prints their pids, then dies the way a test process may die (`panic` once its stdin
//! closes, or `hang` until it is killed), so a test can check that nothing it started outlives it.

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let region = &testkit::regions(1)[0];
    let (pg, kafka) = (region.postgres_pid().unwrap_or(0), region.kafka_pid().unwrap_or(0));
    println!("pids {pg} {kafka}");
    use std::io::Write;
    std::io::stdout().flush().expect("flushing stdout");
    match mode.as_str() {
        "panic" => {
            // Not before the test has seen the engines run: it closes stdin once it has.
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            panic!("testkit-probe panics on purpose, with engines running")
        }
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        },
        other => panic!("usage: testkit-probe panic|hang (got {other:?})"),
    }
}
