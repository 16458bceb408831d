export const metadata = {
  title: 'secure-routes + Next.js',
  description: 'A Next.js app behind the secure-routes gateway',
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: 'system-ui, sans-serif', maxWidth: '40rem', margin: '2rem auto' }}>
        {children}
      </body>
    </html>
  );
}
