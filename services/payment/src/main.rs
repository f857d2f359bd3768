#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(saga_payment::PaymentHandler, &saga_payment::MIGRATIONS).await
}
