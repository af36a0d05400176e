//! The kratos-operator binary.

fn main() {
    println!("kratos-operator {}", env!("CARGO_PKG_VERSION"));
}
