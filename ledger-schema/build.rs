//! Build script: rebuild when the migrations change.

// `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know to rebuild when
// a migration file is added: a binary built before it then refuses a database that has it
// ("migration N was previously applied but is missing"). sqlx's documented remedy.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
