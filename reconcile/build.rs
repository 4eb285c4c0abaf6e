//! Build script: rebuild when the migrations change (`sqlx::migrate!` embeds them, but cargo does
//! not know a new file appeared).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
