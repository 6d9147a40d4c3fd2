fn main() {
    std::process::exit(chbuild::cli::run());
}
