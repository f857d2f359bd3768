//! `saga-query`: the read side. `saga-query --rebuild` refolds the read model from its stored
//! history and exits.

/// mimalloc rather than the system allocator: many threads allocate small objects per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_query::main().await
}
