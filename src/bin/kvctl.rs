fn main() {
    eprintln!("kvctl: the client is not built yet (issue 6)");
    std::process::exit(2);
}
