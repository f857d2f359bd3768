#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(saga_order::OrderHandler, &saga_order::MIGRATIONS).await
}
